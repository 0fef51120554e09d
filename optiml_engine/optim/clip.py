"""Global gradient-norm clipping across tensor, pipeline and data parallelism.

The norm is that of the whole model's gradient, each element counted once: a parameter
replicated over the tensor-parallel group counts on tensor-parallel rank 0 only, the last
stage's copy of the tied embedding does not count (the first stage's does), and data-parallel
replicas count once (ZeRO-1 shards are disjoint, so each rank counts its own shard). Clipping
then scales every gradient by min(1, max_norm / (norm + 1e-6)), as torch.nn.utils does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def counts_once_over_tp(param, tp_rank: int) -> bool:
    """Sharded parameters count on every rank (disjoint slices); replicated ones on rank 0."""
    return getattr(param, "tp_shard_dim", None) is not None or tp_rank == 0


def global_norm(squares: torch.Tensor, group=None) -> torch.Tensor:
    """sqrt of the sum over `group` (None: this rank alone) of each rank's sum of squares."""
    total = squares.detach().float().reshape(1).clone()
    if group is not None:
        dist.all_reduce(total, group=group)
    return total.sqrt()[0]


def local_squares(grads, weights=None) -> torch.Tensor:
    """Sum of squares of `grads`; `weights` (same length, 0 or 1) drop elements counted
    elsewhere. Tensors may be flat buffers with an elementwise 0/1 weight tensor."""
    total = torch.zeros((), dtype=torch.float32)
    for i, g in enumerate(grads):
        if g is None:
            continue
        g = g.float()
        w = 1.0 if weights is None else weights[i]
        if isinstance(w, torch.Tensor):
            total = total.to(g.device) + (g * g * w).sum()
        elif w:
            total = total.to(g.device) + (g * g).sum()
    return total


def clip_coefficient(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def clip_grad_norm_(params, max_norm: float, tp_rank: int = 0, skip=(), group=None):
    """Clip .grad of `params` in place to a global norm; returns the norm before clipping.

    `skip` holds parameters whose gradient is counted on another rank (e.g. a tied copy).
    """
    params = [p for p in params if p.grad is not None]
    skip_ids = {id(p) for p in skip}
    weights = [counts_once_over_tp(p, tp_rank) and id(p) not in skip_ids for p in params]
    norm = global_norm(local_squares([p.grad for p in params], weights), group)
    if max_norm > 0:
        coef = clip_coefficient(norm, max_norm)
        for p in params:
            p.grad.mul_(coef.to(p.grad.device, p.grad.dtype))
    return norm
