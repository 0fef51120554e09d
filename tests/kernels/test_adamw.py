"""Multi-tensor mixed-precision AdamW against torch.optim.AdamW (and, for the CUDA op on a GPU,
against a hand-written fp32 AdamW)."""

import math

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


# --- the CUDA op (csrc/cuda/multi_tensor_adamw.cu) on a GPU ------------------------------------


def needs_cuda(test):
    """GPU-only: marked `gpu`, skipped without a CUDA device."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return pytest.mark.gpu(skip(test))


# Off the op's 4096-element chunks, on them, across them, one empty: many launch-table rows.
OP_SHAPES = [(1,), (4095,), (4096,), (4097,), (0,), (3, 5000), (64, 1000), (7, 13)]
INV_SCALE = 1.0 / 8  # gradients come scaled by 8, as a loss scale would leave them


def fp32_reference_step(master, grad, m, v, lr, step, inv_scale, weight_decay):
    """One AdamW update written out in fp32, operation by operation in the order of the CUDA
    kernel, with its fp32 coefficients (the kernel takes them as floats). The coefficients are
    0-dim tensors on the GPU: torch divides by a host scalar as a multiplication by its
    reciprocal, which the kernel does not."""
    def f32(x):
        return torch.tensor(x, dtype=torch.float32, device=master.device)

    beta1, beta2, eps = f32(HP["beta1"]), f32(HP["beta2"]), f32(HP["eps"])
    decay = f32(1.0 - lr * weight_decay)
    step_size = f32(lr / (1.0 - HP["beta1"] ** step))
    bc2_sqrt = f32(math.sqrt(1.0 - HP["beta2"] ** step))
    g = grad.float() * f32(inv_scale)
    m.copy_(beta1 * m + (1.0 - beta1) * g)
    v.copy_(beta2 * v + ((1.0 - beta2) * g) * g)
    denom = v.sqrt() / bc2_sqrt + eps
    master.copy_(master * decay - step_size * (m / denom))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@needs_cuda
def test_cuda_op_matches_a_hand_written_fp32_adamw(dtype):
    """10 steps, changing lr, scaled gradients: fp32 params (their own masters), or bf16/fp16
    params with fp32 masters; masters and moments against the fp32 loop, params = masters
    rounded."""
    g = torch.Generator(device="cuda").manual_seed(0)
    start = [torch.randn(s, device="cuda", generator=g) for s in OP_SHAPES]
    low = dtype != torch.float32
    masters = [p.clone() for p in start] if low else None
    params = [p.to(dtype) for p in start]
    m, v, ref_m, ref_v = ([torch.zeros_like(p) for p in start] for _ in range(4))
    ref = [p.clone() for p in start]
    inv = torch.tensor(INV_SCALE, device="cuda")
    for step, lr in enumerate(LRS, start=1):
        grads = [(8 * torch.randn(s, device="cuda", generator=g)).to(dtype) for s in OP_SHAPES]
        found = adamw_step(params, grads, m, v, masters, lr=lr, step=step, inv_scale=inv,
                           backend="cuda", **HP)
        assert found.item() == 0.0
        for i, grad in enumerate(grads):
            fp32_reference_step(ref[i], grad, ref_m[i], ref_v[i], lr, step, INV_SCALE,
                                HP["weight_decay"])
    got = masters if low else params
    for i in range(len(OP_SHAPES)):
        # The same fp32 operations in the same order: equal up to a few ulps. A wrong term (a
        # missing decay is 1e-4 of a weight per step, a bias correction off by a step is more)
        # is far outside.
        torch.testing.assert_close(got[i], ref[i], rtol=1e-6, atol=1e-6, msg=f"tensor {i}")
        torch.testing.assert_close(m[i], ref_m[i], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(v[i], ref_v[i], rtol=1e-5, atol=1e-7)
        if low:
            assert params[i].dtype == dtype and torch.equal(params[i], masters[i].to(dtype))
    assert any((r - s).abs().max() > 1e-3 for r, s in zip(ref, start, strict=True) if r.numel())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@needs_cuda
def test_cuda_op_skips_a_step_with_a_non_finite_gradient(dtype, bad):
    """One bad value, in the last chunk of a large tensor: found_inf is set and nothing moves;
    a found_inf raised before the call (another group's overflow) skips a clean step too."""
    g = torch.Generator(device="cuda").manual_seed(1)
    start = [torch.randn(s, device="cuda", generator=g) for s in OP_SHAPES]
    low = dtype != torch.float32
    masters = [p.clone() for p in start] if low else None
    params = [p.to(dtype) for p in start]
    m = [torch.full_like(p, 0.5) for p in start]
    v = [torch.full_like(p, 0.25) for p in start]
    state = [params, m, v] + ([masters] if low else [])
    before = [[t.clone() for t in ts] for ts in state]
    grads = [torch.randn(s, device="cuda", generator=g).to(dtype) for s in OP_SHAPES]
    grads[6][-1, -1] = bad
    found = adamw_step(params, grads, m, v, masters, lr=1e-3, step=1, backend="cuda", **HP)
    assert found.item() == 1.0
    grads[6][-1, -1] = 0.0
    raised = torch.ones((), device="cuda")
    adamw_step(params, grads, m, v, masters, lr=1e-3, step=1, found_inf=raised,
               check_non_finite=False, backend="cuda", **HP)
    assert raised.item() == 1.0
    for ts, bs in zip(state, before, strict=True):
        for t, b in zip(ts, bs, strict=True):
            assert torch.equal(t, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@needs_cuda
def test_cuda_non_finite_check_finds_one_value_among_many_tensors(dtype):
    """39 tensors of 1..39 chunks (+ a few elements): a clean set passes; one inf or NaN at the
    first element, at the end of a middle tensor or inside the last one is found; a finite
    value that overflows fp32 under inv_scale is found too (fp32 and bf16 hold 3e38)."""
    shapes = [(4096 * k + k,) for k in range(1, 40)]
    g = torch.Generator(device="cuda").manual_seed(2)
    grads = [torch.randn(s, device="cuda", generator=g).to(dtype) for s in shapes]
    found = torch.zeros((), device="cuda")
    check_grads(grads, 1.0, found, backend="cuda")
    assert found.item() == 0.0
    for t, i, bad in [(0, 0, float("inf")), (17, -1, float("nan")), (38, 12345, -float("inf"))]:
        old = grads[t][i].item()
        grads[t][i] = bad
        found = torch.zeros((), device="cuda")
        check_grads(grads, 1.0, found, backend="cuda")
        assert found.item() == 1.0, (t, i, bad)
        grads[t][i] = old
    if dtype != torch.float16:
        grads[20][100] = 3e38
        found = torch.zeros((), device="cuda")
        check_grads(grads, 1.0, found, backend="cuda")
        assert found.item() == 0.0
        check_grads(grads, torch.tensor(2.0, device="cuda"), found, backend="cuda")
        assert found.item() == 1.0
