"""Example-by-example packed attention (the CPU path for long rows) against the masked SDPA
reference: forward and backward in fp32, at bucket borders, with padding runs and B > 1."""

import pytest
import torch

from optiml_engine.kernels.attention import attention, sdpa_attention
from optiml_engine.kernels.segment_attention import BUCKET, segment_attention


def packed(lengths_per_row, h=3, d=16, seed=0):
    torch.manual_seed(seed)
    s = sum(lengths_per_row[0])
    doc = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)]
                        for row in lengths_per_row])
    q, k, v = (torch.randn(len(lengths_per_row), s, h, d, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))
    return q, k, v, doc


CASES = {
    "bucket-borders": [[BUCKET - 1, BUCKET, BUCKET + 1, 1, 2 * BUCKET]],
    "two-rows-padding": [[40, 3, 70, 15], [1, 100, 27]],  # the last run of a row: its padding
    "one-example": [[96]],
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_matches_the_masked_reference_forward_and_backward(case):
    q, k, v, doc = packed(CASES[case])
    got = segment_attention(q, k, v, doc, scale=0.3)
    want = sdpa_attention(q, k, v, doc, scale=0.3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(got)
    g_got = torch.autograd.grad(got, (q, k, v), grad_out)
    g_want = torch.autograd.grad(want, (q, k, v), grad_out)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fp32_within_1e6_and_dropout_is_reproducible():
    q, k, v, doc = packed([[300, 500, 224], [1024]])
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    got = segment_attention(q32, k32, v32, doc)
    torch.testing.assert_close(got, sdpa_attention(q32, k32, v32, doc), rtol=1e-6, atol=1e-6)
    torch.manual_seed(5)
    a = segment_attention(q32, k32, v32, doc, dropout_p=0.2)
    torch.manual_seed(5)
    b = segment_attention(q32, k32, v32, doc, dropout_p=0.2)
    assert torch.equal(a, b) and not torch.allclose(a, got)


def test_auto_takes_it_for_long_rows_only_and_the_answer_is_the_same(monkeypatch):
    from optiml_engine.kernels import segment_attention as module

    calls = []
    monkeypatch.setattr(module, "segment_attention",
                        lambda *a, **kw: calls.append(a[0].shape[1]) or segment_attention(*a, **kw))
    q, k, v, doc = packed([[600, 424]])
    short = [t[:, :200].detach() for t in (q, k, v)]
    for args in ((q, k, v, doc[:, :1024]), (*short, doc[:, :200])):
        torch.testing.assert_close(attention(*args, backend="auto"),
                                   sdpa_attention(*args), rtol=1e-12, atol=1e-12)
    assert calls == [1024]  # the 200-token rows took the masked SDPA
    attention(*short, doc[:, :200], backend="segments")  # asked for by name: any length
    assert calls == [1024, 200]


def test_fused_qkv_views_many_buckets_fp32_forward_and_backward():
    """As the model calls it: q, k, v unbound from one [B, S, H, 3, D] projection (strided
    views), rows of many examples in many buckets, the last run ending exactly at a bucket."""
    rows = [[5, 64, 1, 33, 200, 31, 2, 176, 512], [300, 3, 97, 96, 128, 400]]
    b, s, h, d = len(rows), sum(rows[0]), 4, 8
    assert all(sum(r) == s for r in rows)
    doc = torch.tensor([[i for i, n in enumerate(r) for _ in range(n)] for r in rows])
    torch.manual_seed(3)
    qkv = torch.randn(b, s, h, 3, d, requires_grad=True)
    got = segment_attention(*qkv.unbind(3), doc, scale=0.35)
    want = sdpa_attention(*qkv.unbind(3), doc, scale=0.35)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    grad_out = torch.randn_like(got)
    (g_got,) = torch.autograd.grad(got, qkv, grad_out)
    (g_want,) = torch.autograd.grad(want, qkv, grad_out)
    torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-6)
