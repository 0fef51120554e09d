"""The language-model loss: output projection + masked cross-entropy, one function for every
tensor-parallel size (one rank is a group of one: its reductions do nothing).

With chunk_tokens > 0 the projection and the loss run chunk by chunk of target tokens
(`linear_cross_entropy`), so the [tokens x vocab] logits never exist in full; with 0 the full
logits of this rank's vocabulary shard are built and `vocab_parallel_cross_entropy` reduces
their statistics over the shards.
"""

from __future__ import annotations

import torch.nn.functional as F

from optiml_engine.kernels.linear_cross_entropy import linear_cross_entropy
from optiml_engine.kernels.vocab_parallel_cross_entropy import (
    AllReduce,
    vocab_parallel_cross_entropy,
)


def _nothing(t):
    return t


def lm_loss_sum(hidden, weight, labels, loss_mask, chunk_tokens: int = 0, vocab_start: int = 0,
                all_reduce_max: AllReduce | None = None, all_reduce_sum: AllReduce | None = None):
    """fp32 sum of the cross-entropy where loss_mask is set; `weight` is this rank's vocabulary
    shard [V/tp, H] starting at id `vocab_start`, the all-reduces those of its group."""
    if chunk_tokens:
        return linear_cross_entropy(hidden, weight, labels, loss_mask, chunk_tokens,
                                    vocab_start=vocab_start, all_reduce_max=all_reduce_max,
                                    all_reduce_sum=all_reduce_sum)
    return vocab_parallel_cross_entropy(F.linear(hidden, weight), labels, loss_mask, vocab_start,
                                        all_reduce_max or _nothing, all_reduce_sum or _nothing)
