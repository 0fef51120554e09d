"""Masked cross-entropy summed over target tokens: one entry point, backends behind it.

`torch`: F.cross_entropy on an fp32 copy of the logits (the reference). `triton`: a fused kernel
that computes the loss and the gradient in one launch, so autograd keeps one logits-sized buffer
in the logits' own dtype instead of fp32 copies, log-probabilities and their gradient.
The per-token pieces (`loss_and_grad`, `shard_stats`, `shard_grad`) are shared with the chunked
linear + cross-entropy and the vocab-parallel form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optiml_engine.kernels import dispatch


def torch_masked_cross_entropy(logits, targets, loss_mask):
    """Sum over positions where loss_mask is set of -log p(target); accumulated in fp32."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    mask = loss_mask.reshape(-1)
    # Non-target positions may hold any label (e.g. -100 or padding); never index with them.
    safe_targets = torch.where(mask.bool(), targets.reshape(-1), 0)
    losses = F.cross_entropy(flat, safe_targets, reduction="none")
    return (losses * mask.to(losses.dtype)).sum()


def shard_stats(logits, targets, weights, vocab_start: int = 0, backend: str = "torch"):
    """Per token over this vocab shard: (max, sum exp(x - max), target logit or 0); fp32 [N]."""
    if backend == "triton":
        from optiml_engine.kernels.triton_cross_entropy import triton_cross_entropy_forward

        _, mx, sumexp, target_logit, _ = triton_cross_entropy_forward(
            logits, targets, weights, vocab_start, write_grad=False)
        return mx, sumexp, target_logit
    x = logits.reshape(-1, logits.shape[-1]).float()
    mx = x.amax(dim=-1)  # values only: max(dim) also builds the indices, 5x the time
    sumexp = torch.sub(x, mx[:, None]).exp_().sum(dim=-1)  # one temporary, not two
    local = targets.reshape(-1) - vocab_start
    in_shard = (local >= 0) & (local < x.shape[-1])
    picked = x.gather(1, torch.where(in_shard, local, 0)[:, None])[:, 0]
    return mx, sumexp, torch.where(in_shard, picked, 0.0)


def shard_grad(logits, targets, weights, lse, vocab_start: int = 0, backend: str = "torch"):
    """weight * (softmax - onehot) over this shard given the full-vocab lse; logits' dtype."""
    if backend == "triton":
        from optiml_engine.kernels.triton_cross_entropy import triton_cross_entropy_grad

        return triton_cross_entropy_grad(logits, targets, weights, lse, vocab_start)
    x = logits.reshape(-1, logits.shape[-1]).float()
    grad = torch.sub(x, lse[:, None]).exp_()  # in place from here on: one logits-sized buffer
    local = targets.reshape(-1) - vocab_start
    in_shard = (local >= 0) & (local < x.shape[-1])
    rows = torch.nonzero(in_shard).flatten()
    grad[rows, local[rows]] -= 1.0
    return grad.mul_(weights[:, None]).to(logits.dtype)


def loss_and_grad(logits, targets, weights, backend: str = "torch"):
    """Single device: (fp32 weighted loss sum, dlogits [N, V] in the logits' dtype)."""
    if backend == "triton":
        from optiml_engine.kernels.triton_cross_entropy import triton_cross_entropy_forward

        loss, _, _, _, dlogits = triton_cross_entropy_forward(logits, targets, weights)
        return loss.sum(), dlogits
    # One exp pass: the shifted exponentials give both the sum and (rescaled) the softmax.
    x = logits.reshape(-1, logits.shape[-1]).float()
    mx = x.amax(dim=-1)
    rows = torch.arange(x.shape[0], device=x.device)
    targets = torch.where(weights != 0, targets.reshape(-1), 0)  # unweighted labels may be -100
    target_logit = x[rows, targets]
    grad = torch.sub(x, mx[:, None]).exp_()
    sumexp = grad.sum(dim=-1)
    loss = ((mx + torch.log(sumexp) - target_logit) * weights).sum()
    grad.mul_((weights / sumexp)[:, None])
    grad[rows, targets] -= weights
    return loss, grad.to(logits.dtype)


class FusedCrossEntropy(torch.autograd.Function):
    """The loss and its gradient computed together; backward only scales the gradient."""

    @staticmethod
    def forward(ctx, logits, targets, weights, backend):
        loss, dlogits = loss_and_grad(logits, targets, weights, backend)
        ctx.save_for_backward(dlogits)
        ctx.shape = logits.shape
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (dlogits,) = ctx.saved_tensors
        # In place: the saved gradient is ours alone, and a logits-sized copy is what we avoid.
        return dlogits.mul_(grad_loss.to(dlogits.dtype)).view(ctx.shape), None, None, None


def token_weights(loss_mask: torch.Tensor) -> torch.Tensor:
    return loss_mask.reshape(-1).to(torch.float32).contiguous()


def masked_cross_entropy(logits, targets, loss_mask, backend: str | None = None):
    """logits [..., V], targets and loss_mask [...]; returns the fp32 sum of masked losses.

    `backend`: auto | torch | triton; None takes the recipe's choice (`dispatch.configure`).
    """
    chosen = dispatch.resolve("cross_entropy",
                              dispatch.requested_backend("cross_entropy", backend), logits.device)
    if chosen == "triton":
        flat = logits.reshape(-1, logits.shape[-1])
        return FusedCrossEntropy.apply(flat, targets.reshape(-1), token_weights(loss_mask),
                                       "triton")
    return torch_masked_cross_entropy(logits, targets, loss_mask)
