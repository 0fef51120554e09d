"""Autograd-aware communication inside the tensor-parallel group.

Each function is the identity on one side of autograd and a collective on the other (or two
conjugate collectives), so a layer's forward and backward stay correct without extra code:

    copy_to_tp_region          forward: identity             backward: all-reduce
    reduce_from_tp_region      forward: all-reduce           backward: identity
    scatter_to_tp_region       forward: keep my last-dim chunk   backward: all-gather last dim
    gather_from_tp_region      forward: all-gather last dim  backward: keep my chunk
    scatter_to_sequence_parallel_region   forward: keep my sequence chunk  backward: all-gather
    gather_from_sequence_parallel_region  forward: all-gather sequence  backward: reduce-scatter
    reduce_scatter_to_sequence_parallel_region  forward: reduce-scatter  backward: all-gather

Activations are batch-first [B, S, ...]; the sequence dimension is 1. A group of None means a
single rank: every function is then the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from optiml_engine.distributed import state

SEQ_DIM = 1

# torch 2.13 renamed the tensor-to-tensor collectives; keep working on the older names too.
all_gather_into_tensor = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_tensor = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    """Sum over the group into a fresh tensor (inputs may be views autograd still needs)."""
    if group_size(group) == 1:
        return x
    x = x.contiguous().clone()
    dist.all_reduce(x, group=group)
    return x


def all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    n = group_size(group)
    if n == 1:
        return x
    x = x.movedim(dim, 0).contiguous()
    out = torch.empty((n * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    all_gather_into_tensor(out, x, group=group)
    return out.movedim(0, dim)


def reduce_scatter(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    n = group_size(group)
    if n == 1:
        return x
    if x.shape[dim] % n:
        raise ValueError(f"dimension {dim} of size {x.shape[dim]} does not split {n} ways")
    x = x.movedim(dim, 0).contiguous()
    out = torch.empty((x.shape[0] // n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    reduce_scatter_tensor(out, x, group=group)
    return out.movedim(0, dim)


def split(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    n = group_size(group)
    if n == 1:
        return x
    if x.shape[dim] % n:
        raise ValueError(f"dimension {dim} of size {x.shape[dim]} does not split {n} ways")
    return x.chunk(n, dim)[group_rank(group)].contiguous()


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return split(x, -1, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, -1, ctx.group), None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather(x, -1, group)

    @staticmethod
    def backward(ctx, grad):
        return split(grad, -1, ctx.group), None


class _ScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return split(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, SEQ_DIM, ctx.group), None


class _GatherFromSP(torch.autograd.Function):
    """The gathered output feeds tensor-parallel layers, whose input gradients are partial sums:
    backward therefore reduce-scatters (sums the partials, keeps my chunk)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter(grad, SEQ_DIM, ctx.group), None


class _ReduceScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return reduce_scatter(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, SEQ_DIM, ctx.group), None


def _tp(group):
    return state.tp_group() if group is None else group


def copy_to_tp_region(x, group=None):
    return _CopyToTP.apply(x, _tp(group))


def reduce_from_tp_region(x, group=None):
    return _ReduceFromTP.apply(x, _tp(group))


def scatter_to_tp_region(x, group=None):
    return _ScatterToTP.apply(x, _tp(group))


def gather_from_tp_region(x, group=None):
    return _GatherFromTP.apply(x, _tp(group))


def scatter_to_sequence_parallel_region(x, group=None):
    return _ScatterToSP.apply(x, _tp(group))


def gather_from_sequence_parallel_region(x, group=None):
    return _GatherFromSP.apply(x, _tp(group))


def reduce_scatter_to_sequence_parallel_region(x, group=None):
    return _ReduceScatterToSP.apply(x, _tp(group))
