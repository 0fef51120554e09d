"""Cross-entropy over logits split along the vocabulary (tensor parallelism, Megatron style).

Each rank holds logits [N, V/tp] for vocab ids [vocab_start, vocab_start + V/tp). Three
all-reduces make the full-vocabulary loss: MAX of the per-shard max, then SUM of the shard's
sum of exponentials rescaled to that max, and SUM of the target logit (0 on every shard but the
one owning the target); the last two travel in one tensor. The caller passes the all-reduces as
callables that reduce a tensor in place (e.g. `partial(dist.all_reduce, op=ReduceOp.MAX,
group=tp_group)`), so this file never touches process groups and tests can simulate shards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from optiml_engine.kernels import dispatch
from optiml_engine.kernels.cross_entropy import shard_grad, shard_stats, token_weights

AllReduce = Callable[[torch.Tensor], object]


def combine_shard_stats(maxes, sumexps, target_logits):
    """What the all-reduces compute, from every shard's stats: (log-sum-exp, target logit)."""
    global_max = torch.stack(maxes).max(dim=0).values
    total = sum(s * torch.exp(m - global_max) for m, s in zip(maxes, sumexps, strict=True))
    return global_max + torch.log(total), sum(target_logits)


def all_reduce_stats(mx, sumexp, target_logit, all_reduce_max: AllReduce,
                     all_reduce_sum: AllReduce):
    """The in-place all-reduce version of `combine_shard_stats` for one rank's stats."""
    global_max = mx.clone()
    all_reduce_max(global_max)
    packed = torch.stack([sumexp * torch.exp(mx - global_max), target_logit])
    all_reduce_sum(packed)
    return global_max + torch.log(packed[0]), packed[1]


class VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, weights, vocab_start, all_reduce_max, all_reduce_sum,
                backend):
        stats = shard_stats(logits, targets, weights, vocab_start, backend)
        lse, target_logit = all_reduce_stats(*stats, all_reduce_max, all_reduce_sum)
        dlogits = shard_grad(logits, targets, weights, lse, vocab_start, backend)
        ctx.save_for_backward(dlogits)
        ctx.shape = logits.shape
        return ((lse - target_logit) * weights).sum()

    @staticmethod
    def backward(ctx, grad_loss):
        (dlogits,) = ctx.saved_tensors
        grad = dlogits.mul_(grad_loss.to(dlogits.dtype)).view(ctx.shape)
        return grad, None, None, None, None, None, None


def vocab_parallel_cross_entropy(logits_shard, targets, loss_mask, vocab_start: int,
                                 all_reduce_max: AllReduce, all_reduce_sum: AllReduce,
                                 backend: str | None = None):
    """fp32 sum of masked losses over the full vocabulary, from this rank's logits shard.

    Every rank gets the same loss; the gradient flows to its own shard only.
    """
    chosen = dispatch.resolve("cross_entropy",
                              dispatch.requested_backend("cross_entropy", backend),
                              logits_shard.device)
    flat = logits_shard.reshape(-1, logits_shard.shape[-1])
    return VocabParallelCrossEntropy.apply(flat, targets.reshape(-1), token_weights(loss_mask),
                                           vocab_start, all_reduce_max, all_reduce_sum, chosen)
