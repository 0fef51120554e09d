"""Chunked linear + cross-entropy against the full-logits reference."""

import threading
from functools import partial

import pytest
import torch

from optiml_engine.kernels.cross_entropy import torch_masked_cross_entropy
from optiml_engine.kernels.linear_cross_entropy import linear_cross_entropy

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOKENS, HIDDEN, VOCAB = 22, 48, 600


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, TOKENS // 2, HIDDEN, generator=g).to(DEVICE)
    weight = (0.3 * torch.randn(VOCAB, HIDDEN, generator=g)).to(DEVICE)
    targets = torch.randint(0, VOCAB, (2, TOKENS // 2), generator=g).to(DEVICE)
    loss_mask = (torch.rand(2, TOKENS // 2, generator=g) > 0.25).to(DEVICE)
    return hidden, weight, targets, loss_mask


def reference(hidden, weight, targets, loss_mask):
    h, w = (t.detach().clone().requires_grad_() for t in (hidden, weight))
    loss = torch_masked_cross_entropy(h @ w.T, targets, loss_mask)
    (loss / 3).backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_chunked_loss_and_grads_match_full_logits(backend):
    hidden, weight, targets, loss_mask = problem()
    h, w = (t.clone().requires_grad_() for t in (hidden, weight))
    loss = linear_cross_entropy(h, w, targets, loss_mask, chunk_size=8, backend=backend)
    (loss / 3).backward()
    ref_loss, ref_h, ref_w = reference(hidden, weight, targets, loss_mask)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(h.grad, ref_h, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w.grad, ref_w, atol=1e-6, rtol=1e-5)
    assert h.grad[~loss_mask].abs().max() == 0.0


def test_bf16_autocast_keeps_fp32_loss_and_param_dtypes():
    hidden, weight, targets, loss_mask = problem(seed=1)
    h, w = (t.clone().requires_grad_() for t in (hidden, weight))
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, targets, loss_mask, chunk_size=5, backend="torch")
    (loss / 3).backward()
    ref_loss, ref_h, ref_w = reference(hidden, weight, targets, loss_mask)
    assert loss.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, atol=0.1, rtol=2e-2)
    torch.testing.assert_close(h.grad, ref_h, atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(w.grad, ref_w, atol=2e-2, rtol=5e-2)


def test_vocab_parallel_shards_over_simulated_ranks():
    """2 ranks, each with half the vocabulary: same loss everywhere, grads that add up."""
    hidden, weight, targets, loss_mask = problem(seed=2)
    barrier, slots = threading.Barrier(2), [None, None]

    def all_reduce(tensor, rank, op):
        slots[rank] = tensor.clone()
        barrier.wait()
        both = torch.stack(slots)
        tensor.copy_(both.max(0).values if op == "max" else both.sum(0))
        barrier.wait()

    results = [None, None]

    def rank_main(rank):
        lo, hi = rank * VOCAB // 2, (rank + 1) * VOCAB // 2
        h, w = hidden.clone().requires_grad_(), weight[lo:hi].clone().requires_grad_()
        loss = linear_cross_entropy(h, w, targets, loss_mask, chunk_size=8, vocab_start=lo,
                                    all_reduce_max=partial(all_reduce, rank=rank, op="max"),
                                    all_reduce_sum=partial(all_reduce, rank=rank, op="sum"),
                                    backend="torch")
        (loss / 3).backward()
        results[rank] = (loss.detach(), h.grad, w.grad)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ref_loss, ref_h, ref_w = reference(hidden, weight, targets, loss_mask)
    for loss, _, _ in results:
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(results[0][1] + results[1][1], ref_h, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([results[0][2], results[1][2]]), ref_w,
                               atol=1e-6, rtol=1e-5)


def test_a_batch_without_targets_has_zero_loss_and_grads():
    hidden, weight, targets, loss_mask = problem(seed=3)
    h, w = (t.clone().requires_grad_() for t in (hidden, weight))
    loss = linear_cross_entropy(h, w, targets, torch.zeros_like(loss_mask), chunk_size=8,
                                backend="torch")
    loss.backward()
    assert loss.item() == 0.0
    assert h.grad.abs().max() == 0.0 and w.grad.abs().max() == 0.0
