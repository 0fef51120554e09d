"""Apply tensor (and sequence) parallelism to an OPT model by swapping its layers.

The model is built whole and initialised from the seed on every rank; each Linear/Embedding is
then replaced by its parallel counterpart holding this rank's slice, so every layout starts from
the same full weights. Attention infers its local heads from the projection's output width.

    qkv_proj, fc1       -> ColumnParallelLinear (qkv is head-major: a row slice = whole heads)
    out_proj, fc2       -> RowParallelLinear
    embed_tokens        -> VocabParallelEmbedding (also the tied output layer)
    embed_positions     -> replicated; with SP its output is scattered along the sequence

With sequence parallelism the LayerNorms (and 350M's project_in/out) act on sequence shards, so
their gradients are partial sums over the group: they are marked `sequence_parallel` and
`sync_sequence_parallel_grads` sums them. Dropout on sharded activations runs on the
per-tensor-parallel-rank RNG stream (`random.get_rng_tracker().fork()`).
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn

from optiml_engine.errors import OptimlError
from optiml_engine.parallel import mappings
from optiml_engine.parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from optiml_engine.parallel.random import get_rng_tracker


class SequenceScatteredEmbedding(nn.Embedding):
    """A replicated embedding whose output keeps only this rank's sequence chunk (SP)."""

    group = None

    def forward(self, ids):
        return mappings.scatter_to_sequence_parallel_region(super().forward(ids), self.group)


def _in_tp_stream(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        with get_rng_tracker().fork():
            return forward(*args, **kwargs)
    return run


def _mark_sequence_parallel(module: nn.Module | None) -> None:
    if module is not None:
        for p in module.parameters():
            p.sequence_parallel = True


def check_divisible(cfg, tp: int, where: str = "recipe") -> None:
    for key, value in (("num_heads", cfg.num_heads), ("ffn_hidden_size", cfg.ffn_hidden_size),
                       ("vocab_size", cfg.vocab_size)):
        if value % tp:
            raise OptimlError(f"{where}: parallel.tp", f"model.{key}={value} cannot be split "
                              f"{tp} ways", f"choose a parallel.tp that divides model.{key}")


def apply_tensor_parallel(model, group, sequence_parallel: bool = False):
    """Swap `model`'s layers for tensor-parallel ones over `group`, in place; returns model."""
    tp = mappings.group_size(group)
    if tp == 1:
        return model
    check_divisible(model.config, tp)
    dec, sp = model.decoder, sequence_parallel
    dec.embed_tokens = VocabParallelEmbedding.from_dense(dec.embed_tokens, sequence_parallel=sp,
                                                         group=group)
    if sp:
        positions = SequenceScatteredEmbedding(*dec.embed_positions.weight.shape)
        positions.group = group
        with torch.no_grad():
            positions.weight.copy_(dec.embed_positions.weight)
        dec.embed_positions = positions
        for module in (dec.project_in, dec.project_out, dec.final_layer_norm):
            _mark_sequence_parallel(module)
    for layer in dec.layers:
        attn = layer.self_attn
        attn.qkv_proj = ColumnParallelLinear.from_dense(attn.qkv_proj, sequence_parallel=sp,
                                                        group=group)
        attn.out_proj = RowParallelLinear.from_dense(attn.out_proj, sequence_parallel=sp,
                                                     group=group)
        layer.fc1 = ColumnParallelLinear.from_dense(layer.fc1, sequence_parallel=sp, group=group)
        layer.fc2 = RowParallelLinear.from_dense(layer.fc2, sequence_parallel=sp, group=group)
        if sp:
            _mark_sequence_parallel(layer.self_attn_layer_norm)
            _mark_sequence_parallel(layer.final_layer_norm)
            # Every activation of the block is sharded (heads or sequence): one stream per rank.
            layer.forward = _in_tp_stream(layer.forward)
        else:
            attn.forward = _in_tp_stream(attn.forward)  # heads are sharded, residuals are not
    if sp:
        dec.embed = _in_tp_stream(dec.embed)
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
