"""Mixed-precision AdamW over many tensors at once: one step function, backends behind it.

`adamw_step` updates fp32 master weights (or fp32 params that are their own masters) and fp32
moments from (possibly bf16/fp16) gradients multiplied by `inv_scale` (1 / loss scale, times a
clip coefficient if the caller folds one in), then writes the masters back into the model params.
Weight decay is decoupled (AdamW): p <- p * (1 - lr * wd) before the Adam update, as torch does.
If any unscaled gradient is inf/NaN the step changes nothing and `found_inf` (fp32 0-dim tensor on
the params' device, returned) is set to 1 for the loss scaler; the fused backends decide this on
the device without a host sync.

Backends: `cuda` (optiml_engine._cuda_ops, csrc/cuda), `triton` (triton_adamw.py), `apex`
(amp_C.multi_tensor_adam on fp32 copies of the grads), `torch_fused` (torch's fused AdamW kernel,
fed our masters and skip flag: the fastest CPU path), `foreach` (torch._foreach_*, the portable
fallback).
`loop` is the one-tensor-at-a-time baseline benchmarks compare against.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from optiml_engine.kernels import dispatch


def _as_tensor(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32).reshape(())
    return torch.tensor(float(x), dtype=torch.float32, device=device)


def _is_unit(inv_scale) -> bool:
    """inv_scale is the number 1 (a tensor is never assumed to be: reading it would sync)."""
    return not isinstance(inv_scale, torch.Tensor) and float(inv_scale) == 1.0


def _unscaled_fp32(grads, inv_scale, found_inf=None, unit=False):
    """fp32 grads * inv_scale; with found_inf, also flags any inf/NaN there (GradScaler's op).

    The caller's grads keep their values: when they are fp32 and `unit` (inv_scale is 1) they
    are used as they are (the check multiplies them by exactly 1), otherwise fp32 copies are
    made.
    """
    if unit and all(g.dtype == torch.float32 for g in grads):
        g32 = list(grads)
    else:
        g32 = [g.to(torch.float32, copy=True) for g in grads]
    if found_inf is not None:
        torch._amp_foreach_non_finite_check_and_unscale_(g32, found_inf, inv_scale)
    elif not unit:
        torch._foreach_mul_(g32, inv_scale)
    return g32


def _checked_fp32(grads, inv_scale, found_inf, check, unit):
    """Unscaled fp32 gradients, or None when a non-finite one means the step is skipped."""
    g32 = _unscaled_fp32(grads, inv_scale, found_inf if check else None, unit)
    return None if found_inf.item() else g32


def _foreach_step(params, grads, masters, exp_avgs, exp_avg_sqs, hp, inv_scale, found_inf,
                  check):
    g32 = _checked_fp32(grads, inv_scale, found_inf, check, hp["unit_scale"])
    if g32 is None:
        return
    targets = masters if masters is not None else params
    torch._foreach_mul_(targets, hp["decay"])
    torch._foreach_lerp_(exp_avgs, g32, 1.0 - hp["beta1"])
    torch._foreach_mul_(exp_avg_sqs, hp["beta2"])
    torch._foreach_addcmul_(exp_avg_sqs, g32, g32, value=1.0 - hp["beta2"])
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, hp["bc2_sqrt"])
    torch._foreach_add_(denom, hp["eps"])
    torch._foreach_addcdiv_(targets, exp_avgs, denom, value=-hp["step_size"])
    if masters is not None:
        torch._foreach_copy_(params, masters)


def _torch_fused_step(params, grads, masters, exp_avgs, exp_avg_sqs, hp, inv_scale, found_inf,
                      check):
    """torch's own fused AdamW kernel (`AdamW(fused=True)`), given our masters and skip flag.

    It reads found_inf itself, so a skipped step needs no host sync; it wants fp32 grads like
    its fp32 targets, and its own unscaling would write into them, so it gets ours instead.
    """
    g32 = _unscaled_fp32(grads, inv_scale, found_inf if check else None, hp["unit_scale"])
    targets = masters if masters is not None else params
    steps = [torch.full((), float(hp["step"]), device=targets[0].device)] * len(targets)
    torch._fused_adamw_(targets, g32, exp_avgs, exp_avg_sqs, [], steps, lr=hp["lr"],
                        beta1=hp["beta1"], beta2=hp["beta2"], weight_decay=hp["weight_decay"],
                        eps=hp["eps"], amsgrad=False, maximize=False, found_inf=found_inf)
    if masters is not None:  # unchanged masters on a skipped step: copying them back is a no-op
        torch._foreach_copy_(params, masters)


def _loop_step(params, grads, masters, exp_avgs, exp_avg_sqs, hp, inv_scale, found_inf, check):
    """Per-tensor Python loop: the baseline a multi-tensor kernel is measured against."""
    g32 = [g.float() * inv_scale for g in grads]
    if check:
        for g in g32:
            torch.maximum(found_inf, (~torch.isfinite(g)).any().float(), out=found_inf)
    if found_inf.item():
        return
    targets = masters if masters is not None else params
    for i, p in enumerate(targets):
        g, m, v = g32[i], exp_avgs[i], exp_avg_sqs[i]
        p.mul_(hp["decay"])
        m.mul_(hp["beta1"]).add_(g, alpha=1.0 - hp["beta1"])
        v.mul_(hp["beta2"]).addcmul_(g, g, value=1.0 - hp["beta2"])
        p.addcdiv_(m, v.sqrt().div_(hp["bc2_sqrt"]).add_(hp["eps"]), value=-hp["step_size"])
        if masters is not None:
            params[i].copy_(p)


def _apex_step(params, grads, masters, exp_avgs, exp_avg_sqs, hp, inv_scale, found_inf, check):
    import amp_C
    from apex.multi_tensor_apply import multi_tensor_applier

    g32 = _checked_fp32(grads, inv_scale, found_inf, check, hp["unit_scale"])
    if g32 is None:
        return
    targets = masters if masters is not None else params
    overflow = torch.zeros(1, dtype=torch.int32, device=params[0].device)
    multi_tensor_applier(amp_C.multi_tensor_adam, overflow, [g32, targets, exp_avgs, exp_avg_sqs],
                         hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["step"], 1, 1,
                         hp["weight_decay"])
    if masters is not None:
        torch._foreach_copy_(params, masters)


def _fused_step(backend, params, grads, masters, exp_avgs, exp_avg_sqs, hp, inv_scale,
                found_inf, check):
    """cuda / triton: one launch per (param, grad) dtype pair; all checks before any update."""
    if backend == "cuda":
        from optiml_engine import _cuda_ops as ops
    else:
        from optiml_engine.kernels import triton_adamw as ops
    groups = defaultdict(list)
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        groups[(p.dtype, g.dtype)].append(i)
    picks = [lambda ts, idx=idx: [ts[i] for i in idx] if ts is not None else []
             for idx in groups.values()]
    if check:
        for pick in picks:
            ops.non_finite_check(pick(grads), inv_scale, found_inf)
    for pick in picks:
        ops.adamw_update(pick(params), pick(grads), pick(masters), pick(exp_avgs),
                         pick(exp_avg_sqs), inv_scale, found_inf, hp["beta1"], hp["beta2"],
                         hp["eps"], hp["decay"], hp["step_size"], hp["bc2_sqrt"])


STEPS = {"foreach": _foreach_step, "torch_fused": _torch_fused_step, "loop": _loop_step,
         "apex": _apex_step}


@torch.no_grad()
def adamw_step(params, grads, exp_avgs, exp_avg_sqs, masters=None, *, lr: float,
               beta1: float, beta2: float, eps: float, weight_decay: float, step: int,
               inv_scale=1.0, found_inf: torch.Tensor | None = None,
               check_non_finite: bool = True, backend: str | None = None) -> torch.Tensor:
    """One AdamW update (`step` counts from 1) of every tensor in the lists; returns found_inf.

    `masters`: fp32 copies of the params (None when the params are fp32 themselves). For
    several parameter groups, run `check_grads` over all of them first, then one adamw_step per
    group with the same found_inf and check_non_finite=False, so one bad grad skips every group.
    """
    device = params[0].device
    if backend != "loop":
        backend = dispatch.resolve("adamw", dispatch.requested_backend("adamw", backend), device)
    if masters is None and any(p.dtype != torch.float32 for p in params):
        raise ValueError("bf16/fp16 params need fp32 master weights")
    found_inf = torch.zeros((), device=device) if found_inf is None else found_inf
    hp = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step,
              decay=1.0 - lr * weight_decay, step_size=lr / (1.0 - beta1**step),
              bc2_sqrt=math.sqrt(1.0 - beta2**step), unit_scale=_is_unit(inv_scale))
    inv = _as_tensor(inv_scale, device)
    args = (params, grads, masters, exp_avgs, exp_avg_sqs, hp, inv, found_inf, check_non_finite)
    if backend in ("cuda", "triton"):
        _fused_step(backend, *args)
    else:
        STEPS[backend](*args)
    return found_inf


@torch.no_grad()
def check_grads(grads, inv_scale, found_inf: torch.Tensor, backend: str | None = None):
    """Set found_inf to 1 if any grad * inv_scale is inf/NaN (the loss scaler's overflow test)."""
    device = grads[0].device
    backend = dispatch.resolve("adamw", dispatch.requested_backend("adamw", backend), device)
    inv = _as_tensor(inv_scale, device)
    if backend in ("cuda", "triton"):
        if backend == "cuda":
            from optiml_engine import _cuda_ops as ops
        else:
            from optiml_engine.kernels import triton_adamw as ops
        by_dtype = defaultdict(list)
        for g in grads:
            by_dtype[g.dtype].append(g)
        for same in by_dtype.values():
            ops.non_finite_check(same, inv, found_inf)
    else:
        _unscaled_fp32(grads, inv, found_inf, _is_unit(inv_scale))
    return found_inf
