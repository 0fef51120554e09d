"""Output projection + masked cross-entropy, walked over the tokens in chunks.

The [tokens x vocab] logits never exist in full: each chunk of tokens gets its logits, its loss
and dlogits (cross-entropy backend of the dispatcher), and at once the gradients of its hidden
states (dlogits @ W) and its share of the output-embedding gradient (dlogits^T @ h, accumulated
in fp32). Backward only scales the stored gradients, so peak extra memory is one chunk of logits
(and its gradient) instead of several full-size fp32 buffers.

Only target tokens are projected at all: a token with loss weight 0 has neither loss nor
gradient, and instruction tuning masks every source token, so the output projection (the
largest matmul of a small model) shrinks to the target fraction of the batch.

With a vocab-parallel weight shard, pass `vocab_start` and the two all-reduce callables (see
`vocab_parallel_cross_entropy.py`); the hidden-state gradient returned is then this rank's
partial sum, which the caller's tensor-parallel input region all-reduces in backward.
"""

from __future__ import annotations

import torch

from optiml_engine.kernels import dispatch
from optiml_engine.kernels.cross_entropy import (
    loss_and_grad,
    shard_grad,
    shard_stats,
    token_weights,
)
from optiml_engine.kernels.vocab_parallel_cross_entropy import all_reduce_stats

DEFAULT_CHUNK = 4096


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, chunk_size, vocab_start, reduce_max,
                reduce_sum, backend):
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h_all = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
            # Every tensor-parallel rank holds the same mask, so all pick the same rows. The
            # row count sizes the buffers: one host sync per call, paid back by the skipped rows.
            rows = torch.nonzero(weights).flatten()
            h, targets, weights = h_all[rows], targets[rows], weights[rows]
            w = weight.to(dtype)
            grad_h = torch.empty_like(h)
            # The first chunk's product is written into grad_w, later ones added: no zero-filled
            # [V, H] fp32 buffer (the size of the output embedding) to read back once more.
            new_w = torch.zeros if h.shape[0] == 0 else torch.empty
            grad_w = new_w(weight.shape, dtype=torch.float32, device=weight.device)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for lo in range(0, h.shape[0], chunk_size):
                h_c, t_c, w_c = h[lo:lo + chunk_size], targets[lo:lo + chunk_size], \
                    weights[lo:lo + chunk_size]
                logits = h_c @ w.T
                if reduce_max is None:
                    loss, dlogits = loss_and_grad(logits, t_c, w_c, backend)
                else:
                    stats = shard_stats(logits, t_c, w_c, vocab_start, backend)
                    lse, target_logit = all_reduce_stats(*stats, reduce_max, reduce_sum)
                    loss = ((lse - target_logit) * w_c).sum()
                    dlogits = shard_grad(logits, t_c, w_c, lse, vocab_start, backend)
                del logits
                total += loss
                torch.mm(dlogits, w, out=grad_h[lo:lo + chunk_size])
                if lo == 0:
                    torch.mm(dlogits.T.float(), h_c.float(), out=grad_w)
                else:
                    grad_w.addmm_(dlogits.T.float(), h_c.float())
                del dlogits  # before the next chunk's logits exist
            grad_h = torch.zeros_like(h_all).index_copy_(0, rows, grad_h)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.hidden_shape = hidden.shape
        ctx.scaled = False
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        # Scaled in place: the stored gradients are ours alone, and an out-of-place product
        # would be one more [V, H] fp32 buffer. So a second backward (retain_graph) is refused.
        if ctx.scaled:
            raise RuntimeError("linear_cross_entropy: backward through the same graph twice is "
                               "not supported (its stored gradients are scaled in place)")
        ctx.scaled = True
        grad_h, grad_w = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_hidden = grad_h.mul_(grad_loss.to(grad_h.dtype)).to(hidden_dtype)
        grad_weight = grad_w.mul_(grad_loss).to(weight_dtype)
        return (grad_hidden.view(ctx.hidden_shape), grad_weight,
                None, None, None, None, None, None, None)


def linear_cross_entropy(hidden, weight, targets, loss_mask, chunk_size: int = DEFAULT_CHUNK, *,
                         vocab_start: int = 0, all_reduce_max=None, all_reduce_sum=None,
                         backend: str | None = None):
    """fp32 sum over masked tokens of -log softmax(hidden @ weight.T)[target].

    hidden [..., H], weight [V (or this rank's V shard), H], targets and loss_mask [...].
    `backend` is the cross-entropy backend (auto | torch | triton) used on each chunk.
    """
    if (all_reduce_max is None) != (all_reduce_sum is None):
        raise ValueError("vocab-parallel needs both all_reduce_max and all_reduce_sum")
    chosen = dispatch.resolve("cross_entropy",
                              dispatch.requested_backend("cross_entropy", backend), hidden.device)
    return LinearCrossEntropy.apply(hidden, weight, targets.reshape(-1), token_weights(loss_mask),
                                    chunk_size, vocab_start, all_reduce_max, all_reduce_sum,
                                    chosen)
