"""Tensor-parallel layers: column- and row-parallel Linear, vocab-parallel Embedding.

Each layer keeps the parameter names of its dense counterpart (`weight`, `bias`), so state-dict
keys do not depend on the layout. A sharded parameter carries `tp_shard_dim` (the dimension of
the full tensor it is a slice of); a parameter replicated over the tensor-parallel group whose
gradient is only partial on each rank (it acts on sequence-sharded activations) carries
`sequence_parallel = True` and has its gradient summed over the group before the step.

Initialisation builds the FULL tensor from the current (seeded, rank-independent) RNG and keeps
this rank's slice, so every tensor-parallel size yields the same full weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from optiml_engine.distributed import mappings, state


def shard(full: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    if full.shape[dim] % size:
        raise ValueError(f"size {full.shape[dim]} of dimension {dim} does not split {size} ways")
    return full.chunk(size, dim)[rank].clone()


def _full_then_shard(shape, dim, init_method, rank, size, dtype=None) -> nn.Parameter:
    full = torch.empty(shape, dtype=dtype)
    init_method(full)
    p = nn.Parameter(shard(full, dim, rank, size))
    p.tp_shard_dim = dim
    return p


def _normal(std: float) -> Callable[[torch.Tensor], None]:
    return lambda t: nn.init.normal_(t, std=std)


class ColumnParallelLinear(nn.Module):
    """y = x A^T + b with A split by rows (output features): each rank computes its outputs.

    Input: replicated activations, or sequence-sharded ones when sequence_parallel (all-gathered
    here). Output: this rank's slice of the features (or all of them with gather_output).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 gather_output: bool = False, sequence_parallel: bool = False,
                 init_method: Callable | None = None, group=None):
        super().__init__()
        self.group = group if group is not None else state.tp_group()
        rank, size = mappings.group_rank(self.group), mappings.group_size(self.group)
        self.in_features, self.out_features = in_features, out_features
        self.gather_output, self.sequence_parallel = gather_output, sequence_parallel
        init_method = init_method or _normal(0.02)
        self.weight = _full_then_shard((out_features, in_features), 0, init_method, rank, size)
        if bias:
            self.bias = _full_then_shard((out_features,), 0, nn.init.zeros_, rank, size)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_dense(cls, linear: nn.Linear, **kwargs) -> ColumnParallelLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    init_method=nn.init.zeros_, **kwargs)
        rank, size = mappings.group_rank(layer.group), mappings.group_size(layer.group)
        with torch.no_grad():
            layer.weight.copy_(shard(linear.weight, 0, rank, size))
            if linear.bias is not None:
                layer.bias.copy_(shard(linear.bias, 0, rank, size))
        return layer

    def forward(self, x):
        if self.sequence_parallel:
            x = mappings.gather_from_sequence_parallel_region(x, self.group)
        else:
            x = mappings.copy_to_tp_region(x, self.group)
        y = F.linear(x, self.weight, self.bias)
        return mappings.gather_from_tp_region(y, self.group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x A^T + b with A split by columns (input features): partial sums are then reduced
    (all-reduced, or reduce-scattered along the sequence when sequence_parallel)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 input_is_parallel: bool = True, sequence_parallel: bool = False,
                 init_method: Callable | None = None, group=None):
        super().__init__()
        self.group = group if group is not None else state.tp_group()
        rank, size = mappings.group_rank(self.group), mappings.group_size(self.group)
        self.in_features, self.out_features = in_features, out_features
        self.input_is_parallel, self.sequence_parallel = input_is_parallel, sequence_parallel
        init_method = init_method or _normal(0.02)
        self.weight = _full_then_shard((out_features, in_features), 1, init_method, rank, size)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features))
            self.bias.sequence_parallel = sequence_parallel
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_dense(cls, linear: nn.Linear, **kwargs) -> RowParallelLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    init_method=nn.init.zeros_, **kwargs)
        rank, size = mappings.group_rank(layer.group), mappings.group_size(layer.group)
        with torch.no_grad():
            layer.weight.copy_(shard(linear.weight, 1, rank, size))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x):
        if not self.input_is_parallel:
            x = mappings.scatter_to_tp_region(x, self.group)
        y = F.linear(x, self.weight)
        if self.sequence_parallel:
            y = mappings.reduce_scatter_to_sequence_parallel_region(y, self.group)
        else:
            y = mappings.reduce_from_tp_region(y, self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Embedding with the vocabulary split into contiguous ranges; ids outside this rank's range
    look up zeros and the partial results are summed over the group (reduce-scattered along the
    sequence when sequence_parallel)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 sequence_parallel: bool = False, init_method: Callable | None = None,
                 group=None):
        super().__init__()
        self.group = group if group is not None else state.tp_group()
        rank, size = mappings.group_rank(self.group), mappings.group_size(self.group)
        if num_embeddings % size:
            raise ValueError(f"vocabulary of {num_embeddings} does not split {size} ways")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.sequence_parallel = padding_idx, sequence_parallel
        per_rank = num_embeddings // size
        self.vocab_start, self.vocab_end = rank * per_rank, (rank + 1) * per_rank
        init_method = init_method or _normal(0.02)
        self.weight = _full_then_shard((num_embeddings, embedding_dim), 0, init_method, rank, size)

    @classmethod
    def from_dense(cls, emb: nn.Embedding, **kwargs) -> VocabParallelEmbedding:
        layer = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx,
                    init_method=nn.init.zeros_, **kwargs)
        with torch.no_grad():
            layer.weight.copy_(emb.weight[layer.vocab_start:layer.vocab_end])
        return layer

    def forward(self, ids):
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        pad = self.padding_idx
        local_pad = pad - self.vocab_start if pad is not None and \
            self.vocab_start <= pad < self.vocab_end else None
        out = F.embedding(local, self.weight, padding_idx=local_pad)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return mappings.reduce_scatter_to_sequence_parallel_region(out, self.group)
        return mappings.reduce_from_tp_region(out, self.group)
