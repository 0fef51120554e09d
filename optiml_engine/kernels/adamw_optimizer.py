"""`torch.optim.Optimizer` face of `adamw_step`: a drop-in for torch.optim.AdamW.

Keeps fp32 master weights for bf16/fp16 params and fp32 moments in `state`, so checkpoints
(state_dict, torch.distributed.checkpoint) carry them. `step(inv_scale=...)` unscales the
gradients, checks every group's gradients for inf/NaN first, and skips the whole update (step
counts unchanged) when one is found; it returns the found-inf flag for the loss scaler.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from optiml_engine.kernels.adamw import adamw_step, check_grads


class MixedPrecisionAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, backend: str | None = None):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.backend = backend

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32,
                                                memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
            if p.dtype != torch.float32:
                state["master"] = p.detach().float().contiguous()
        return state

    @torch.no_grad()
    def step(self, closure=None, inv_scale=1.0) -> torch.Tensor:
        """One update of every param with a grad; returns found_inf (1.0: skipped)."""
        if closure is not None:
            with torch.enable_grad():
                closure()
        with_grads = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        everything = [p for ps in with_grads for p in ps]
        if not everything:
            return torch.zeros(())
        device = everything[0].device
        found_inf = torch.zeros((), device=device)
        check_grads([p.grad for p in everything], inv_scale, found_inf, self.backend)
        if found_inf.item():  # the caller syncs on the loss anyway; skipping here is simplest
            return found_inf
        for group, params in zip(self.param_groups, with_grads, strict=True):
            # One batch per (steps done, has master): params that joined late have fewer steps.
            batches = defaultdict(list)
            for p in params:
                state = self._state(p)
                batches[(int(state["step"]), "master" in state)].append(p)
            for (done, _), batch in batches.items():
                self._update(group, batch, done + 1, inv_scale, found_inf)
        return found_inf

    def _update(self, group, params, step, inv_scale, found_inf):
        states = [self.state[p] for p in params]
        masters = [s["master"] for s in states] if "master" in states[0] else None
        beta1, beta2 = group["betas"]
        adamw_step([p.data for p in params], [p.grad for p in params],
                   [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], masters,
                   lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                   weight_decay=group["weight_decay"], step=step, inv_scale=inv_scale,
                   found_inf=found_inf, check_non_finite=False, backend=self.backend)
        for s in states:
            s["step"] += 1
