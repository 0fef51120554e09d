"""Triton packed-sequence flash attention against the SDPA reference (outputs and gradients)."""

import pytest
import torch
import torch.nn.functional as F
from attention_inputs import (
    BLOCK,
    DEVICE,
    ROWS,
    doc_ids_from_lengths,
    gpu_case,
    instruction_rows,
    qkv,
)

from optiml_engine.kernels.attention import attention, sdpa_attention
from optiml_engine.kernels.segments import segment_bounds
from optiml_engine.kernels.triton_attention import triton_attention

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def run_kernel(q, k, v, doc_ids, grad_out, block=BLOCK):
    bounds = segment_bounds(doc_ids) if doc_ids is not None else (None, None)
    out = triton_attention(q, k, v, *bounds, block_m=block, block_n=block)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in (q, k, v)]


def run_reference(q, k, v, doc_ids, grad_out):
    """fp32 SDPA on the same (possibly rounded) inputs."""
    ref = [t.detach().float().requires_grad_() for t in (q, k, v)]
    out = sdpa_attention(*ref, doc_ids)
    out.backward(grad_out.float())
    return out.detach(), [t.grad for t in ref]


def run_per_example_reference(q, k, v, rows, grad_out):
    """fp32 SDPA run on each example alone (causal, unpadded), as a user without packing
    would; the rows' examples laid back in place."""
    ref = [t.detach().float().requires_grad_() for t in (q, k, v)]
    out_rows = []
    for b, lengths in enumerate(rows):
        pieces, start = [], 0
        for n in lengths:
            sl = [t[b:b + 1, start:start + n].transpose(1, 2) for t in ref]
            pieces.append(F.scaled_dot_product_attention(*sl, is_causal=True).transpose(1, 2))
            start += n
        out_rows.append(torch.cat(pieces, dim=1))
    out = torch.cat(out_rows, dim=0)
    out.backward(grad_out.float())
    return out.detach(), [t.grad for t in ref]


def relative_error(got, want):
    return ((got.float() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("dtype,head_dim,with_docs", [
    (torch.float32, 80, True),
    (torch.bfloat16, 64, True),
    pytest.param(torch.float16, 96, True, marks=pytest.mark.slow),
    pytest.param(torch.float32, 128, False, marks=pytest.mark.slow),
])
def test_matches_sdpa_forward_and_backward(dtype, head_dim, with_docs):
    doc_ids = doc_ids_from_lengths(ROWS) if with_docs else None
    q, k, v = qkv(2, 76, 2, head_dim, dtype)
    grad_out = torch.randn(2, 76, 2, head_dim, generator=torch.Generator().manual_seed(1))
    grad_out = grad_out.to(DEVICE, dtype)
    out, grads = run_kernel(q, k, v, doc_ids, grad_out)
    ref_out, ref_grads = run_reference(q, k, v, doc_ids, grad_out)
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref_out, atol=tol, rtol=tol)
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol, msg=f"d{name}")


def test_padding_rows_get_zero_gradients():
    """A padding run at the end of the row, with no loss on it: its grads are exactly zero."""
    doc_ids = doc_ids_from_lengths([[5, 27, 16], [31, 1, 16]])  # last run of 16 is padding
    q, k, v = qkv(2, 48, 2, 64, torch.float32, seed=3)
    grad_out = torch.randn(2, 48, 2, 64, device=DEVICE)
    grad_out[:, 32:] = 0.0
    out, grads = run_kernel(q, k, v, doc_ids, grad_out)
    ref_out, ref_grads = run_reference(q, k, v, doc_ids, grad_out)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(got).all()
        assert got[:, 32:].abs().max() == 0.0
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_token_that_sees_nothing_gives_zero_output_and_no_nan():
    """Run bounds that exclude a token from every run (start > i > end): a fully masked row."""
    q, k, v = qkv(1, 32, 2, 64, torch.float32, seed=4)
    start, end = segment_bounds(doc_ids_from_lengths([[10, 1, 21]]))
    start[0, 10], end[0, 10] = 11, 9
    out = triton_attention(q, k, v, start, end, block_m=BLOCK, block_n=BLOCK)
    out.backward(torch.ones_like(out))
    assert out[0, 10].abs().max() == 0.0
    for t in (out, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    assert q.grad[0, 10].abs().max() == 0.0
    assert k.grad[0, 10].abs().max() == 0.0 and v.grad[0, 10].abs().max() == 0.0


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_masked_tiles_are_never_read():
    """NaN in tiles that must be skipped (an earlier example, above the diagonal) stays out."""
    doc_ids = doc_ids_from_lengths([[32, 32]])
    q, k, v = qkv(1, 64, 1, 64, torch.float32, seed=5)
    clean_out = sdpa_attention(q.detach(), k.detach(), v.detach(), doc_ids)
    poisoned_v = v.detach().clone()
    poisoned_v[:, :32] = float("nan")  # the first example's two key tiles
    poisoned_v[:, 48:] = float("nan")  # the tile above the diagonal of query tile 32..47
    start, end = segment_bounds(doc_ids)
    out = triton_attention(q.detach(), k.detach(), poisoned_v, start, end,
                           block_m=BLOCK, block_n=BLOCK)
    torch.testing.assert_close(out[:, 32:48], clean_out[:, 32:48], atol=1e-5, rtol=1e-5)
    # Backward: key tiles of the first example never visit query tiles of the second one.
    poisoned_q = q.detach().clone()
    poisoned_q[:, 32:] = float("nan")
    poisoned_q.requires_grad_()
    k2, v2 = (t.detach().clone().requires_grad_() for t in (k, v))
    out = triton_attention(poisoned_q, k2, v2, start, end, block_m=BLOCK, block_n=BLOCK)
    out.backward(torch.ones_like(out))
    for g in (poisoned_q.grad, k2.grad, v2.grad):
        assert torch.isfinite(g[:, :32]).all()


def test_dispatcher_takes_cu_seqlens_and_falls_back_for_kv_cache():
    q, k, v = qkv(1, 40, 2, 64, torch.float32, seed=6)
    cu_seqlens = torch.tensor([0, 7, 24, 33], device=DEVICE)  # 7 padding tokens after the last
    doc_ids = doc_ids_from_lengths([[7, 17, 9, 7]])
    got = attention(q, k, v, cu_seqlens=cu_seqlens, backend="triton")
    want = sdpa_attention(q, k, v, doc_ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Decoding 3 new tokens against 40 cached keys: the kernel does not do Sq != Sk -> SDPA.
    q_new = q[:, -3:].detach()
    got = attention(q_new, k, v, doc_ids[:, -3:], doc_ids, backend="triton")
    want = sdpa_attention(q_new, k, v, doc_ids[:, -3:], doc_ids)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_real_size_on_gpu(head_dim):
    """A 2048-token row holding 8 examples, bf16, default tile sizes."""
    doc_ids, q, k, v, grad_out = gpu_case(head_dim, seed=7)
    out = attention(q, k, v, doc_ids, backend="triton")
    out.backward(grad_out)
    ref_out, ref_grads = run_reference(q, k, v, doc_ids, grad_out)
    torch.testing.assert_close(out.float(), ref_out, atol=2e-2, rtol=2e-2)
    for got, want in zip((q.grad, k.grad, v.grad), ref_grads, strict=True):
        torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("head_dim", [64, 80, 128])  # OPT-1.3B, OPT-2.7B, OPT-6.7B and up
def test_opt_shapes_against_sdpa_per_example_on_gpu(head_dim):
    """OPT's attention shape (32 heads), two bf16 rows of 2048 tokens packed with examples of an
    instruction-like length profile, autotuned tiles, against fp32 SDPA on each example."""
    rows = instruction_rows(2, 2048, seed=head_dim)
    doc_ids = doc_ids_from_lengths(rows)
    q, k, v = qkv(2, 2048, 32, head_dim, torch.bfloat16, seed=head_dim)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q)
    out = attention(q, k, v, doc_ids, backend="triton")
    out.backward(grad_out)
    ref_out, ref_grads = run_per_example_reference(q, k, v, rows, grad_out)
    for name, got, want in zip(["out", "dq", "dk", "dv"], [out.detach(), q.grad, k.grad, v.grad],
                               [ref_out, *ref_grads], strict=True):
        assert got.dtype == torch.bfloat16 and got.shape == want.shape
        assert torch.isfinite(got).all(), name
        assert relative_error(got, want) < 1e-2, (name, relative_error(got, want))
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.float(), want, atol=2e-2 * scale, rtol=2e-2, msg=name)


def test_autotuned_tiles_match_sdpa_forward_and_backward():
    """No tile sizes given: every kernel goes through its autotuner (one config on a CPU)."""
    doc_ids = doc_ids_from_lengths(ROWS)
    q, k, v = qkv(2, 76, 2, 80, torch.float32, seed=7)
    grad_out = torch.randn(2, 76, 2, 80, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    out, grads = run_kernel(q, k, v, doc_ids, grad_out, block=None)
    ref_out, ref_grads = run_reference(q, k, v, doc_ids, grad_out)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
