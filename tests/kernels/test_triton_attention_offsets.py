"""Triton attention on tensors spanning more than 2**31 elements: 64-bit offsets.

Element offsets such as b * stride_b + h * stride_h overflow int32 once a tensor passes 2**31
elements (q, k, v as views into a packed [B, S, 3, H, D] projection reach that at B * S * 3 * H * D
>= 2**31; out, dO, dQ, dK, dV at B * S * H * D). Only the last batch rows sit past the border,
so those rows are compared against fp32 SDPA on their slice.
"""

import pytest
import torch
from attention_inputs import BLOCK, DEVICE, GPU_LENGTHS, doc_ids_from_lengths
from offset_views import INT32_LIMIT, view_past_int32

from optiml_engine.kernels.attention import sdpa_attention
from optiml_engine.kernels.segments import segment_bounds
from optiml_engine.kernels.triton_attention import triton_attention

BF16_TOL = 2e-2  # bf16 probabilities and outputs against fp32 SDPA, as in the other bf16 tests


def check_rows_against_sdpa(q, k, v, doc_ids, grad_out, rows, block):
    """Kernel forward and backward on the whole batch; batch `rows` against fp32 SDPA."""
    out = triton_attention(q, k, v, *segment_bounds(doc_ids), block_m=block, block_n=block)
    out.backward(grad_out)
    for r in rows:
        ref = [t.detach()[r:r + 1].float().requires_grad_() for t in (q, k, v)]
        ref_out = sdpa_attention(*ref, doc_ids[r:r + 1])
        ref_out.backward(grad_out[r:r + 1].float())
        torch.testing.assert_close(out[r:r + 1].float(), ref_out.detach(), atol=BF16_TOL,
                                   rtol=BF16_TOL, msg=lambda m, r=r: f"out row {r}: {m}")
        for name, t, want in zip("qkv", (q, k, v), ref, strict=True):
            torch.testing.assert_close(t.grad[r:r + 1].float(), want.grad, atol=BF16_TOL,
                                       rtol=BF16_TOL,
                                       msg=lambda m, r=r, name=name: f"d{name} row {r}: {m}")


def packed_views(qkv):
    """q, k, v leaves sharing the storage of a [B, S, 3, H, D] projection output."""
    return [qkv[:, :, i].detach().requires_grad_() for i in range(3)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU test below runs the real size")
def test_views_past_2_31_elements_under_the_interpreter():
    """Three short rows whose batch stride is just under 2**31 / 2: row 2 starts past 2**31
    (a strided view into a mostly untouched buffer, see offset_views.py)."""
    b, s, h, d = 3, 32, 2, 16
    batch_stride = 2**30 + 2**20
    assert (b - 1) * batch_stride >= INT32_LIMIT > batch_stride
    qkv = view_past_int32((b, s, 3, h, d), (batch_stride, 3 * h * d, h * d, d, 1))
    g = torch.Generator().manual_seed(11)
    qkv.copy_(torch.randn(b, s, 3, h, d, generator=g))
    q, k, v = packed_views(qkv)
    grad_out = torch.randn(b, s, h, d, generator=g).bfloat16()
    doc_ids = doc_ids_from_lengths([[5, 20, 7]] * b)
    check_rows_against_sdpa(q, k, v, doc_ids, grad_out, rows=[0, b - 1], block=BLOCK)


# (batch, heads, GPU GiB needed), 2048 tokens, head dim 128. "qkv": the last row of the packed
# q/k/v starts past 2**31 elements (171 * 2048 * 3 * 16 * 128 = 2.15e9), out and the gradients
# stay below (172 * 2048 * 16 * 128 = 0.72e9). "all": the last row of out, dO, dQ, dK, dV starts
# at 512 * 2048 * 16 * 128 = 2**31 too (the packed projection is 6.4e9 elements, 13 GB).
GPU_CASES = {"qkv": (172, 16, 24), "all": (513, 16, 80)}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_views_past_2_31_elements_on_gpu(case):
    """2048-token bf16 rows of 8 examples, head dim 128, autotuned tiles."""
    b, h, gib_needed = GPU_CASES[case]
    s, d = 2048, 128
    total = torch.cuda.get_device_properties(0).total_memory
    if total < gib_needed * 2**30:
        pytest.skip(f"needs {gib_needed} GiB of GPU memory, the device has {total / 2**30:.0f}")
    assert (b - 1) * s * 3 * h * d >= INT32_LIMIT > s * 3 * h * d  # the last row's q/k/v base
    assert ((b - 1) * s * h * d >= INT32_LIMIT) == (case == "all")  # the last row's out base
    g = torch.Generator(device=DEVICE).manual_seed(12)
    qkv = torch.randn(b, s, 3, h, d, generator=g, device=DEVICE, dtype=torch.bfloat16)
    q, k, v = packed_views(qkv)
    del qkv
    grad_out = torch.randn(b, s, h, d, generator=g, device=DEVICE, dtype=torch.bfloat16)
    lengths = [GPU_LENGTHS, GPU_LENGTHS[::-1]]
    doc_ids = doc_ids_from_lengths([lengths[i % 2] for i in range(b)])
    check_rows_against_sdpa(q, k, v, doc_ids, grad_out, rows=[0, b - 1], block=None)
