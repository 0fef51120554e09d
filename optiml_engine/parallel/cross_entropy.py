"""Masked cross-entropy on vocabulary-sharded logits, without ever gathering them.

Each rank holds logits for the vocabulary range [vocab_start, vocab_start + V_local). Three
all-reduces over the tensor-parallel group give the global max, the sum of exponentials and the
target's logit, so loss = log(sum exp(l - max)) + max - l_target exactly as on one rank. The
backward is local: softmax - one_hot on this rank's columns.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from optiml_engine.parallel import mappings, state


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, loss_mask, vocab_start, group):
        ctx.input_dtype = logits.dtype
        logits = logits.float()
        n = mappings.group_size(group)
        local_max = logits.max(dim=-1).values
        if n > 1:
            dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - local_max.unsqueeze(-1)
        vocab_local = logits.shape[-1]
        inside = (targets >= vocab_start) & (targets < vocab_start + vocab_local)
        local_t = (targets - vocab_start).masked_fill(~inside, 0)
        target_logit = shifted.gather(-1, local_t.unsqueeze(-1)).squeeze(-1)
        target_logit = target_logit.masked_fill(~inside, 0.0)
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        if n > 1:
            both = torch.stack([sum_exp, target_logit])
            dist.all_reduce(both, group=group)
            sum_exp, target_logit = both[0], both[1]
        losses = sum_exp.log() - target_logit
        mask = loss_mask.to(losses.dtype)
        ctx.save_for_backward(exp, sum_exp, local_t, inside, mask)
        return (losses * mask).sum()

    @staticmethod
    def backward(ctx, grad):
        exp, sum_exp, local_t, inside, mask = ctx.saved_tensors
        g = exp / sum_exp.unsqueeze(-1)  # softmax over the full vocabulary, my columns
        flat = g.view(-1, g.shape[-1])
        rows = torch.arange(flat.shape[0], device=g.device)
        flat[rows, local_t.view(-1)] -= inside.view(-1).to(g.dtype)
        g = g * (mask * grad).unsqueeze(-1)
        return g.to(ctx.input_dtype), None, None, None, None


def vocab_parallel_masked_cross_entropy(local_logits, targets, loss_mask, vocab_start=None,
                                        group=None):
    """fp32 sum over positions where loss_mask is set of -log p(target).

    local_logits [..., V / tp] (this rank's vocabulary slice), targets and loss_mask [...].
    With one rank it equals kernels.cross_entropy.masked_cross_entropy.
    """
    group = state.tp_group() if group is None else group
    if vocab_start is None:
        vocab_start = mappings.group_rank(group) * local_logits.shape[-1]
    return _VocabParallelCE.apply(local_logits, targets, loss_mask, vocab_start, group)
