"""Multi-tensor mixed-precision AdamW against torch.optim.AdamW."""

import pytest
import torch

from optiml_engine.kernels.adamw import adamw_step, check_grads

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1,), (7,), (300,), (33, 40), (0,)]  # off the chunk size, one empty, one spans chunks
LRS = [1e-3 * (1 + i) / 10 for i in range(10)]  # a changing lr, as a schedule gives
HP = dict(beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
BACKENDS = ["foreach", "torch_fused", "loop", "triton"] + (
    ["cuda"] if torch.cuda.is_available() else [])


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(DEVICE) for s in SHAPES]


def make_grads(step, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g).to(DEVICE, dtype) for s in SHAPES]


def torch_adamw_run(params, grads_per_step, weight_decay=HP["weight_decay"]):
    params = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.AdamW(params, lr=LRS[0], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                            weight_decay=weight_decay, foreach=False)
    for lr, grads in zip(LRS, grads_per_step, strict=True):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.float()
        opt.param_groups[0]["lr"] = lr
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_matches_torch_adamw_after_10_steps(backend):
    params = make_params()
    grads_per_step = [make_grads(i) for i in range(10)]
    want = torch_adamw_run(params, grads_per_step)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for step, (lr, grads) in enumerate(zip(LRS, grads_per_step, strict=True), start=1):
        found = adamw_step(params, grads, m, v, lr=lr, step=step, backend=backend, **HP)
        assert found.item() == 0.0
    for got, ref in zip(params, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["foreach", "torch_fused", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_with_fp32_masters(backend, dtype):
    start = make_params(seed=1)
    grads_per_step = [make_grads(i, dtype) for i in range(10)]
    want = torch_adamw_run(start, grads_per_step)  # fp32 run on the same (rounded) grads
    masters = [p.clone() for p in start]
    params = [p.to(dtype) for p in start]
    m = [torch.zeros_like(p) for p in start]
    v = [torch.zeros_like(p) for p in start]
    for step, (lr, grads) in enumerate(zip(LRS, grads_per_step, strict=True), start=1):
        adamw_step(params, grads, m, v, masters, lr=lr, step=step, backend=backend, **HP)
    for p, master, ref in zip(params, masters, want, strict=True):
        torch.testing.assert_close(master, ref, rtol=1e-6, atol=1e-7)
        assert torch.equal(p, master.to(dtype))


@pytest.mark.parametrize("backend", ["foreach", "torch_fused", "triton"])
def test_inf_or_nan_skips_the_step_and_sets_found_inf(backend):
    params = make_params(seed=2)
    before = [p.clone() for p in params]
    m = [torch.full_like(p, 0.5) for p in params]
    v = [torch.full_like(p, 0.25) for p in params]
    grads = make_grads(0)
    grads[2][17] = float("nan")
    grads[3][5, 5] = float("inf")
    found = adamw_step(params, grads, m, v, lr=1e-3, step=1, backend=backend, **HP)
    assert found.item() == 1.0
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p, b)
    assert all(torch.equal(t, torch.full_like(t, 0.5)) for t in m)
    assert all(torch.equal(t, torch.full_like(t, 0.25)) for t in v)


@pytest.mark.parametrize("backend", ["foreach", "torch_fused", "triton"])
def test_overflow_from_the_loss_scale_is_detected(backend):
    grads = [torch.full((300,), 60000.0, dtype=torch.float16, device=DEVICE)]
    found = torch.zeros((), device=DEVICE)
    check_grads(grads, 1.0, found, backend=backend)
    assert found.item() == 0.0
    grads[0][3] = float("inf")  # an fp16 gradient that overflowed under the loss scale
    check_grads(grads, 1.0 / 65536, found, backend=backend)
    assert found.item() == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inv_scale", [1.0, 0.5])
def test_gradients_keep_their_values(backend, dtype, inv_scale):
    """Unscaling works on copies: the caller's gradients (e.g. to log) survive the step."""
    params = [p.to(dtype) for p in make_params()]
    masters = [p.float() for p in params] if dtype != torch.float32 else None
    grads = make_grads(0, dtype)
    before = [g.clone() for g in grads]
    m, v = ([torch.zeros_like(p, dtype=torch.float32) for p in params] for _ in range(2))
    adamw_step(params, grads, m, v, masters, lr=1e-3, step=1, inv_scale=inv_scale,
               backend=backend, **HP)
    for g, b in zip(grads, before, strict=True):
        assert torch.equal(g, b)
