"""Fused masked cross-entropy (Triton and torch pieces) and its vocab-parallel form."""

import threading
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from offset_views import INT32_LIMIT, view_past_int32

from optiml_engine.kernels.cross_entropy import (
    loss_and_grad,
    masked_cross_entropy,
    shard_grad,
    shard_stats,
    torch_masked_cross_entropy,
)
from optiml_engine.kernels.triton_cross_entropy import (
    triton_cross_entropy_forward,
    triton_cross_entropy_grad,
)
from optiml_engine.kernels.vocab_parallel_cross_entropy import (
    combine_shard_stats,
    vocab_parallel_cross_entropy,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VOCAB = 1000  # not a power of two: the last vocab chunk is partial


def inputs(n_tokens, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n_tokens, VOCAB, generator=g)).to(DEVICE, dtype)
    targets = torch.randint(0, VOCAB, (n_tokens,), generator=g).to(DEVICE)
    loss_mask = (torch.rand(n_tokens, generator=g) > 0.3).to(DEVICE)
    targets[~loss_mask] = -100  # non-target positions may hold anything
    return logits, targets, loss_mask


def reference(logits, targets, loss_mask):
    x = logits.detach().float().requires_grad_()
    loss = torch_masked_cross_entropy(x, targets, loss_mask)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2),
                                       (torch.float16, 5e-3)])
def test_triton_loss_and_grad_match_reference(dtype, tol):
    logits, targets, loss_mask = inputs(24, dtype)
    logits = logits.view(2, 12, VOCAB).requires_grad_()
    loss = masked_cross_entropy(logits, targets.view(2, 12), loss_mask.view(2, 12),
                                backend="triton")
    (loss * 0.5).backward()  # a non-unit upstream gradient, as with 1/n_tokens in the trainer
    ref_loss, ref_grad = reference(logits.view(24, VOCAB), targets, loss_mask)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)  # fp32 accumulation
    assert logits.grad.dtype == dtype
    grad = logits.grad.view(24, VOCAB).float()
    torch.testing.assert_close(grad, 0.5 * ref_grad, atol=tol * 0.1, rtol=tol)
    assert grad[~loss_mask].abs().max() == 0.0


def test_torch_pieces_match_reference():
    logits, targets, loss_mask = inputs(16, torch.float32, seed=1)
    loss, grad = loss_and_grad(logits, targets, loss_mask.float())
    ref_loss, ref_grad = reference(logits, targets, loss_mask)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad, ref_grad, atol=1e-7, rtol=1e-5)


def shard_bounds(n_shards):
    size = VOCAB // n_shards
    return [(i * size, (i + 1) * size) for i in range(n_shards)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("n_shards", [2, 4])
def test_combined_shard_stats_equal_the_unsharded_loss(n_shards, backend):
    logits, targets, loss_mask = inputs(20, torch.float32, seed=2)
    weights = loss_mask.float()
    stats = [shard_stats(logits[:, lo:hi], targets, weights, lo, backend)
             for lo, hi in shard_bounds(n_shards)]
    lse, target_logit = combine_shard_stats(*zip(*stats, strict=True))
    loss = ((lse - target_logit) * weights).sum()
    torch.testing.assert_close(loss, reference(logits, targets, loss_mask)[0],
                               atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("n_shards", [2, 4])
def test_triton_vocab_parallel_loss_and_grad_over_sequential_shards(n_shards):
    """The Triton shard kernels (stats, then grad from the combined lse), one shard after another
    (the interpreter is not thread-safe), against full-vocabulary fp32 F.cross_entropy."""
    logits, targets, loss_mask = inputs(20, torch.float32, seed=6)
    g = torch.Generator().manual_seed(7)
    weights = (loss_mask.float() * (0.5 + torch.rand(20, generator=g).to(DEVICE))).contiguous()
    bounds = shard_bounds(n_shards)
    owners = {lo for lo, hi in bounds for t in targets[loss_mask].tolist() if lo <= t < hi}
    assert len(owners) == n_shards  # every shard owns some target
    stats = [shard_stats(logits[:, lo:hi], targets, weights, lo, "triton") for lo, hi in bounds]
    lse, target_logit = combine_shard_stats(*zip(*stats, strict=True))
    loss = ((lse - target_logit) * weights).sum()
    grad = torch.cat([shard_grad(logits[:, lo:hi], targets, weights, lse, lo, "triton")
                      for lo, hi in bounds], dim=1)

    x = logits.detach().clone().requires_grad_()
    safe_targets = torch.where(loss_mask, targets, 0)
    ref_loss = (F.cross_entropy(x, safe_targets, reduction="none") * weights).sum()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss.detach(), atol=0.0, rtol=1e-6)
    torch.testing.assert_close(grad, x.grad, atol=1e-7, rtol=1e-5)
    assert grad[~loss_mask].abs().max() == 0.0


class ThreadGroup:
    """In-place all-reduce across threads: simulated tensor-parallel ranks, no process group."""

    def __init__(self, size):
        self.barrier = threading.Barrier(size)
        self.slots = [None] * size

    def all_reduce(self, tensor, rank, op):
        self.slots[rank] = tensor.clone()
        self.barrier.wait()
        stacked = torch.stack(self.slots)
        tensor.copy_(stacked.max(0).values if op == "max" else stacked.sum(0))
        self.barrier.wait()


@pytest.mark.parametrize("n_shards", [2, 4])
def test_vocab_parallel_loss_and_grads_over_simulated_ranks(n_shards):
    logits, targets, loss_mask = inputs(20, torch.float32, seed=3)
    group = ThreadGroup(n_shards)
    results = [None] * n_shards

    def rank_main(rank, lo, hi):
        shard = logits[:, lo:hi].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(
            shard, targets, loss_mask, lo,
            partial(group.all_reduce, rank=rank, op="max"),
            partial(group.all_reduce, rank=rank, op="sum"), backend="torch")
        loss.backward()
        results[rank] = (loss.detach(), shard.grad)

    threads = [threading.Thread(target=rank_main, args=(r, lo, hi))
               for r, (lo, hi) in enumerate(shard_bounds(n_shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ref_loss, ref_grad = reference(logits, targets, loss_mask)
    for loss, _ in results:
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-6)
    grad = torch.cat([g for _, g in results], dim=1)
    torch.testing.assert_close(grad, ref_grad, atol=1e-7, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_vocab_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(4)
    logits = torch.randn(4096, 50272, device="cuda", generator=g).bfloat16().requires_grad_()
    targets = torch.randint(0, 50272, (4096,), device="cuda", generator=g)
    loss_mask = torch.rand(4096, device="cuda", generator=g) > 0.5
    loss = masked_cross_entropy(logits, targets, loss_mask, backend="triton")
    loss.backward()
    ref_loss, ref_grad = reference(logits, targets, loss_mask)
    torch.testing.assert_close(loss, ref_loss, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(logits.grad.float(), ref_grad, atol=2e-3, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_at_16k_tokens_x_50272_on_gpu(dtype):
    """The issue's size (16k tokens of OPT's vocabulary, 70% targets) against F.cross_entropy
    on fp32 logits: the loss to fp32 summation order, the gradient to one rounding to the
    logits' dtype, exactly zero off target."""
    n, vocab = 16384, 50272
    g = torch.Generator(device="cuda").manual_seed(5)
    logits = (3 * torch.randn(n, vocab, device="cuda", generator=g)).to(dtype)
    logits.requires_grad_()
    targets = torch.randint(0, vocab, (n,), device="cuda", generator=g)
    loss_mask = torch.rand(n, device="cuda", generator=g) < 0.7
    loss = masked_cross_entropy(logits, targets, loss_mask, backend="triton")
    loss.backward()
    x = logits.detach().float().requires_grad_()
    ref = (F.cross_entropy(x, targets, reduction="none") * loss_mask.float()).sum()
    ref.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
    torch.testing.assert_close(loss, ref.detach(), atol=0.0, rtol=1e-5)
    rounding = 2**-8 + 1e-5 if dtype == torch.bfloat16 else 1e-5  # + the fp32 differences
    torch.testing.assert_close(logits.grad.float(), x.grad, atol=1e-9, rtol=rounding)
    assert logits.grad[~loss_mask].abs().max() == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="an interpreter test: host memory only")
def test_rows_past_2_31_elements_under_the_interpreter():
    """row * row_stride in int64: three bf16 rows 2**30 + 2**20 apart, the last past 2**31."""
    row_stride = 2**30 + 2**20
    assert 2 * row_stride >= INT32_LIMIT > row_stride
    logits = view_past_int32((3, VOCAB), (row_stride, 1))
    g = torch.Generator().manual_seed(5)
    logits.copy_(3 * torch.randn(3, VOCAB, generator=g))
    targets = torch.tensor([7, VOCAB - 1, 123])
    weights = torch.ones(3)
    loss, _, _, _, dlogits = triton_cross_entropy_forward(logits, targets, weights)
    x = logits.float().requires_grad_()  # a contiguous fp32 copy of the same values
    F.cross_entropy(x, targets, reduction="sum").backward()
    torch.testing.assert_close(loss, F.cross_entropy(x.detach(), targets, reduction="none"),
                               atol=1e-5, rtol=1e-5)
    # The bf16 gradient is the fp32 one converted once; the interpreter truncates fp32 -> bf16,
    # which is off by less than one bf16 ulp (2**-7 relative at most).
    torch.testing.assert_close(dlogits.float(), x.grad, atol=1e-7, rtol=2**-7)
    lse = torch.logsumexp(x.detach(), dim=-1)
    grad = triton_cross_entropy_grad(logits, targets, weights, lse)
    torch.testing.assert_close(grad.float(), x.grad, atol=1e-7, rtol=2**-7)
