"""Apply tensor (and sequence) parallelism to a model from a declarative plan.

A plan maps module paths (fnmatch patterns over `named_modules()` names) to a style:

    "column"     -> ColumnParallelLinear (output features sharded)
    "row"        -> RowParallelLinear (input features sharded, partial sums reduced)
    "vocab"      -> VocabParallelEmbedding (rows sharded; also serves a tied output layer)
    "sequence_scatter"   a replicated embedding whose output keeps this rank's sequence chunk
    "sequence_parallel"  replicated parameters acting on sequence shards: their gradients are
                         partial sums, summed by `sync_sequence_parallel_grads`
    "tp_rng"     the module runs on the per-tensor-parallel-rank RNG stream (dropout on
                 sharded activations must draw different masks on each rank)

The styles "sequence_*" apply only with sequence parallelism; the caller passes the plan for
the mode it wants. Swapped layers keep their dense counterpart's parameter names, so state-dict
keys do not depend on the layout. This module knows nothing about any particular model.
"""

from __future__ import annotations

import fnmatch

import torch
import torch.distributed as dist
from torch import nn

from optiml_engine.distributed import mappings
from optiml_engine.distributed.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from optiml_engine.distributed.random import get_rng_tracker

SWAPS = {"column": ColumnParallelLinear, "row": RowParallelLinear,
         "vocab": VocabParallelEmbedding}
STYLES = {*SWAPS, "sequence_scatter", "sequence_parallel", "tp_rng"}


class SequenceScatteredEmbedding(nn.Embedding):
    """A replicated embedding whose output keeps only this rank's sequence chunk (SP).
    `sequence_parallel = False` (evaluation, one token per decode step) keeps the whole output."""

    def __init__(self, *args, group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group, self.sequence_parallel = group, True

    def forward(self, ids):
        out = super().forward(ids)
        if not self.sequence_parallel:
            return out
        return mappings.scatter_to_sequence_parallel_region(out, self.group)


def _enter_tp_stream(module, args):
    ctx = get_rng_tracker().fork()
    ctx.__enter__()
    module._tp_rng_contexts.append(ctx)


def _leave_tp_stream(module, args, output):
    module._tp_rng_contexts.pop().__exit__(None, None, None)


def run_on_tp_stream(module: nn.Module) -> None:
    """Run `module`'s forward on the tracked tensor-parallel RNG stream (hooks, so a recomputed
    forward does the same)."""
    module._tp_rng_contexts = []
    module.register_forward_pre_hook(_enter_tp_stream)
    module.register_forward_hook(_leave_tp_stream)


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def _swap(style: str, module: nn.Module, group, sp: bool) -> nn.Module:
    if style in SWAPS:
        return SWAPS[style].from_dense(module, sequence_parallel=sp, group=group)
    scattered = SequenceScatteredEmbedding(*module.weight.shape, group=group)
    with torch.no_grad():
        scattered.weight.copy_(module.weight)
    return scattered


def parallelize(model: nn.Module, plan: dict[str, str], group,
                sequence_parallel: bool = False) -> nn.Module:
    """Apply `plan` to `model` in place over the tensor-parallel `group`; returns model."""
    if mappings.group_size(group) == 1:
        return model
    unknown = set(plan.values()) - STYLES
    if unknown:
        raise ValueError(f"unknown tensor-parallel styles {sorted(unknown)}")
    for path, module in list(model.named_modules()):
        for pattern, style in plan.items():
            if module is None or not fnmatch.fnmatchcase(path, pattern):
                continue
            if style in SWAPS or style == "sequence_scatter":
                _set_module(model, path, _swap(style, module, group, sequence_parallel))
            elif style == "sequence_parallel":
                for p in module.parameters():
                    p.sequence_parallel = True
            else:
                run_on_tp_stream(module)
    return model


@torch.no_grad()
def sync_sequence_parallel_grads(model, group) -> None:
    """Sum over the tensor-parallel group the gradients of `sequence_parallel` parameters."""
    if mappings.group_size(group) == 1:
        return
    grads = [p.grad for p in model.parameters()
             if getattr(p, "sequence_parallel", False) and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
