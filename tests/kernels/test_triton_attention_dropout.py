"""Attention dropout inside the Triton kernel against a pure-torch reference.

The reference takes the kernel's keep mask from `dropout_keep_mask` (same Philox counters) and
does the rest in torch: softmax over the visible keys, times keep / (1 - p), times v.
"""

import pytest
import torch
from attention_inputs import BLOCK, DEVICE, ROWS, doc_ids_from_lengths, gpu_case, qkv

from optiml_engine.distributed.random import checkpoint
from optiml_engine.kernels import attention as attention_module
from optiml_engine.kernels.attention import attention
from optiml_engine.kernels.segments import segment_bounds
from optiml_engine.kernels.triton_attention import (
    draw_dropout_seed,
    dropout_keep_mask,
    triton_attention,
)

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def visible(doc_ids, s):
    """[B, 1, S, S]: causal and same example, written out independently of the engine's mask."""
    i = torch.arange(s, device=DEVICE)
    causal = i[None, :] <= i[:, None]
    return (causal[None] & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]


def reference(q, k, v, doc_ids, keep, p, grad_out):
    """fp32 softmax(scores) * keep / (1 - p) @ v on the same (possibly rounded) inputs."""
    ref = [t.detach().float().requires_grad_() for t in (q, k, v)]
    qt, kt, vt = (t.transpose(1, 2) for t in ref)
    scores = qt @ kt.transpose(-1, -2) * q.shape[-1] ** -0.5
    probs = scores.masked_fill(~visible(doc_ids, q.shape[1]), float("-inf")).softmax(-1)
    out = ((probs * keep / (1.0 - p)) @ vt).transpose(1, 2)
    out.backward(grad_out.float())
    return out.detach(), [t.grad for t in ref]


def run_kernel(q, k, v, doc_ids, p, grad_out, torch_seed, block=BLOCK):
    torch.manual_seed(torch_seed)
    out = triton_attention(q, k, v, *segment_bounds(doc_ids), block_m=block, block_n=block,
                           dropout_p=p)
    out.backward(grad_out)
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    return out.detach(), grads


def kernel_mask(torch_seed, b, h, s, p):
    """The mask the kernel draws after `torch.manual_seed(torch_seed)`."""
    torch.manual_seed(torch_seed)
    return dropout_keep_mask(draw_dropout_seed(DEVICE), b, h, s, p, DEVICE)


@pytest.mark.parametrize("dtype,head_dim,p", [
    (torch.float32, 80, 0.3),
    pytest.param(torch.bfloat16, 64, 0.1, marks=pytest.mark.slow),
])
def test_matches_reference_forward_and_backward(dtype, head_dim, p):
    doc_ids = doc_ids_from_lengths(ROWS)
    q, k, v = qkv(2, 76, 2, head_dim, dtype)
    grad_out = torch.randn(2, 76, 2, head_dim, generator=torch.Generator().manual_seed(1))
    grad_out = grad_out.to(DEVICE, dtype)
    out, grads = run_kernel(q, k, v, doc_ids, p, grad_out, torch_seed=11)
    keep = kernel_mask(11, 2, 2, 76, p)
    ref_out, ref_grads = reference(q, k, v, doc_ids, keep, p, grad_out)
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref_out, atol=tol, rtol=tol)
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert got.dtype == dtype
        # bf16: dS is rounded to bf16 before its matmul, so an entry near 0 carries an absolute
        # error on the scale of the whole gradient: the tolerance is relative to that scale.
        atol = tol if dtype == torch.float32 else tol * max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.float(), want, atol=atol, rtol=tol, msg=f"d{name}")
    # The mask matters: without it the reference is far off.
    no_drop, _ = reference(q, k, v, doc_ids, torch.ones_like(keep), 0.0, grad_out)
    assert (out.float() - no_drop).abs().max() > 0.1


def test_padding_rows_get_zero_gradients_and_no_nan():
    doc_ids = doc_ids_from_lengths([[5, 27, 16], [31, 1, 16]])  # last run of 16 is padding
    q, k, v = qkv(2, 48, 2, 32, seed=3)
    grad_out = torch.randn(2, 48, 2, 32, device=DEVICE)
    grad_out[:, 32:] = 0.0
    out, grads = run_kernel(q, k, v, doc_ids, 0.5, grad_out, torch_seed=2)
    ref_out, ref_grads = reference(q, k, v, doc_ids, kernel_mask(2, 2, 2, 48, 0.5), 0.5,
                                   grad_out)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(got).all()
        assert got[:, 32:].abs().max() == 0.0
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_seed_decides_the_mask_and_tiles_do_not():
    doc_ids = doc_ids_from_lengths([[9, 30, 25]])
    q, k, v = qkv(1, 64, 2, 16, seed=4)
    g = torch.randn(1, 64, 2, 16, device=DEVICE)
    first = run_kernel(q, k, v, doc_ids, 0.2, g, torch_seed=7)
    again = run_kernel(q, k, v, doc_ids, 0.2, g, torch_seed=7, block=32)  # other tile sizes
    for a, b in zip([first[0], *first[1]], [again[0], *again[1]], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.manual_seed(8)
    other = triton_attention(q, k, v, *segment_bounds(doc_ids), dropout_p=0.2)
    assert (first[0] - other).abs().max() > 0.1


def test_kept_fraction_is_one_minus_p():
    s, p = 128, 0.25
    keep = dropout_keep_mask(123456789, 2, 2, s, p, DEVICE)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.008  # 65k draws: sigma ~ 0.0017
    vis = visible(doc_ids_from_lengths([[1, 50, 77], [128]]), s).expand_as(keep)
    assert abs(keep[vis].float().mean().item() - (1 - p)) < 0.012  # 23k draws: sigma ~ 0.0029
    # Heads, batch rows and transposed positions draw independent bits: two independent bits
    # agree with probability p**2 + (1 - p)**2 = 0.625 (16k pairs: sigma ~ 0.0038), and (i, j),
    # (j, i) off the diagonal differ with probability 2 p (1 - p) = 0.375 (8128 pairs: ~ 0.0054).
    for other in (keep[0, 1], keep[1, 0]):
        assert abs((keep[0, 0] == other).float().mean().item() - 0.625) < 0.016
    off_diagonal = ~torch.eye(s, dtype=torch.bool, device=DEVICE)
    differs = (keep[0, 0] != keep[0, 0].T)[off_diagonal].float().mean().item()
    assert abs(differs - 0.375) < 0.022
    assert not torch.equal(keep, dropout_keep_mask(123456790, 2, 2, s, p, DEVICE))


def test_zero_p_runs_the_plain_kernel_and_draws_no_seed():
    doc_ids = doc_ids_from_lengths([[9, 30, 25]])
    q, k, v = qkv(1, 64, 2, 16, seed=5)
    bounds = segment_bounds(doc_ids)
    plain = triton_attention(q, k, v, *bounds)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    zero = attention(q, k, v, doc_ids, dropout_p=0.0, backend="triton")
    assert torch.equal(zero, plain)
    assert torch.equal(torch.get_rng_state(), state)
    # The dropout code with a negligible p keeps everything and scales by 1: same numbers.
    tiny = triton_attention(q, k, v, *bounds, dropout_p=1e-9)
    torch.testing.assert_close(tiny, plain, atol=1e-6, rtol=1e-6)


def test_p_one_drops_everything():
    doc_ids = doc_ids_from_lengths([[20, 12]])
    q, k, v = qkv(1, 32, 1, 16, seed=6)
    out = triton_attention(q, k, v, *segment_bounds(doc_ids), dropout_p=1.0)
    out.backward(torch.ones_like(out))
    assert out.abs().max() == 0.0
    for t in (q, k, v):
        assert t.grad.abs().max() == 0.0
    with pytest.raises(ValueError, match="dropout_p"):
        triton_attention(q, k, v, dropout_p=1.5)


def test_dispatcher_keeps_dropout_in_the_kernel(monkeypatch):
    def no_sdpa(*args, **kwargs):
        raise AssertionError("attention fell back to sdpa")

    monkeypatch.setattr(attention_module, "sdpa_attention", no_sdpa)
    doc_ids = doc_ids_from_lengths([[7, 17, 16]])
    q, k, v = qkv(1, 40, 2, 16, seed=7)
    torch.manual_seed(21)
    got = attention(q, k, v, doc_ids, dropout_p=0.4, backend="triton")
    torch.manual_seed(21)
    want = triton_attention(q, k, v, *segment_bounds(doc_ids), dropout_p=0.4)
    assert torch.equal(got, want)


def test_recompute_replays_the_mask():
    """Activation checkpointing restores the RNG state, so the recomputed mask is the same."""
    doc_ids = doc_ids_from_lengths([[11, 21]])
    q, k, v = qkv(1, 32, 2, 16, seed=8)
    g = torch.randn(1, 32, 2, 16, device=DEVICE)

    def layer(q, k, v):
        return attention(q, k, v, doc_ids, dropout_p=0.3, backend="triton") * 2.0

    torch.manual_seed(4)
    layer(q, k, v).backward(g)
    plain = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    torch.manual_seed(4)
    checkpoint(layer, q, k, v).backward(g)
    for want, t in zip(plain, (q, k, v), strict=True):
        assert torch.equal(t.grad, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_real_size_on_gpu(head_dim):
    """A 2048-token row holding 8 examples, bf16, default tile sizes, p = 0.1."""
    doc_ids, q, k, v, grad_out = gpu_case(head_dim, seed=9)
    torch.manual_seed(3)
    out = attention(q, k, v, doc_ids, dropout_p=0.1, backend="triton")
    out.backward(grad_out)
    keep = kernel_mask(3, 2, 4, 2048, 0.1)
    ref_out, ref_grads = reference(q, k, v, doc_ids, keep, 0.1, grad_out)
    torch.testing.assert_close(out.float(), ref_out, atol=2e-2, rtol=2e-2)
    for got, want in zip((q.grad, k.grad, v.grad), ref_grads, strict=True):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.float(), want, atol=2e-2 * scale, rtol=2e-2)
