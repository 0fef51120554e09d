"""A tensor of which this rank holds only flat runs of elements (a ZeRO shard of a parameter
or of its Adam state), saved and loaded by torch.distributed.checkpoint under the tensor's
full-model name and global shape, without ever assembling it.

A flat run [lo, hi) of a row-major tensor is a union of at most 2 * ndim - 1 boxes (a partial
first row, whole rows, a partial last row, recursively); DCP stores and reshards boxes, so a
checkpoint written from shards loads into any layout (another data-parallel size, tensor or
pipeline split, one process) and one written by any layout loads into shards. The box views
alias the caller's buffers: saving copies one box at a time (DCP's writer), loading writes
straight into them.
"""

from __future__ import annotations

import math

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType


def flat_boxes(lo: int, hi: int, shape) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(offsets, sizes) of the boxes that make up elements [lo, hi) of a row-major `shape`, in
    element order."""
    shape = tuple(shape)
    if lo >= hi:
        return []
    if len(shape) <= 1:
        return [((lo,), (hi - lo,))]
    inner = math.prod(shape[1:])
    first, last = lo // inner, (hi - 1) // inner
    rows = lambda r, boxes: [((r, *o), (1, *s)) for o, s in boxes]  # noqa: E731
    if first == last:
        return rows(first, flat_boxes(lo - first * inner, hi - first * inner, shape[1:]))
    out = []
    full_from = first
    if lo % inner:
        out += rows(first, flat_boxes(lo % inner, inner, shape[1:]))
        full_from = first + 1
    full_to = hi // inner
    if full_to > full_from:
        out.append(((full_from, *([0] * (len(shape) - 1))), (full_to - full_from, *shape[1:])))
    if hi % inner:
        out += rows(full_to, flat_boxes(0, hi % inner, shape[1:]))
    return out


class FlatChunks:
    """DCP's checkpointable protocol (as DTensor implements it) over a list of boxes.

    runs: (lo, hi, view) with `view` a 1-D tensor holding elements [lo, hi) of this rank's
    tensor of `local_shape`; global_shape and global_offset place that local tensor in the
    full one (a tensor-parallel slice: offset along its shard dimension)."""

    def __init__(self, runs, local_shape, global_shape, global_offset):
        self.global_shape = torch.Size(global_shape)
        self.boxes: list[tuple[torch.Size, torch.Size, torch.Tensor]] = []
        for lo, hi, view in runs:
            at = 0
            for offsets, sizes in flat_boxes(lo, hi, local_shape):
                n = math.prod(sizes)
                glob = torch.Size(o + g for o, g in zip(offsets, global_offset, strict=True))
                self.boxes.append((glob, torch.Size(sizes), view[at:at + n].view(sizes)))
                at += n

    def tensors(self) -> list[torch.Tensor]:
        return [t for _, _, t in self.boxes]

    def __create_write_items__(self, fqn: str, obj) -> list[WriteItem]:
        return [WriteItem(index=MetadataIndex(fqn, offsets), type=WriteItemType.SHARD,
                          tensor_data=TensorWriteData(
                              chunk=ChunkStorageMetadata(offsets=offsets, sizes=sizes),
                              properties=TensorProperties.create_from_tensor(t),
                              size=self.global_shape))
                for offsets, sizes, t in self.boxes]

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [ChunkStorageMetadata(offsets=o, sizes=s) for o, s, _ in self.boxes]

    def __get_tensor_shard__(self, index: MetadataIndex) -> torch.Tensor:
        for offsets, _, t in self.boxes:
            if offsets == index.offset:
                return t
        raise ValueError(f"{index.fqn}: no chunk at {index.offset} on this rank")


def exact_alias(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor's values through a tensor whose storage is exactly them (no copy).

    DCP's writer clones every tensor that is a view of a larger storage (our buffers' views)
    and keeps each clone until the rank's file is complete: the whole state again, at once.
    An alias of just the view's bytes is written as it is."""
    raw = t.detach().reshape(-1).view(torch.uint8).numpy()
    return torch.frombuffer(raw, dtype=t.dtype).view(t.shape)


class FlatChunksSavePlanner(DefaultSavePlanner):
    """DCP's default save planner, which looks a FlatChunks box up by its offsets (DCP's own
    lookup does so only for torch.Tensor subclasses) and hands the writer views of our buffers
    without a copy (exact_alias)."""

    def resolve_data(self, write_item):
        t = super().resolve_data(write_item)
        if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.is_contiguous() and \
                t.numel() and t.untyped_storage().nbytes() != t.nbytes:
            return exact_alias(t)
        return t

    def lookup_object(self, index: MetadataIndex):
        obj = self.state_dict.get(index.fqn)
        if isinstance(obj, FlatChunks):
            return obj.__get_tensor_shard__(index)
        return super().lookup_object(index)


def _chunks_in(tree: dict, path=()) -> list[tuple[tuple[str, ...], FlatChunks]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _chunks_in(value, (*path, key))
        elif isinstance(value, FlatChunks):
            out.append(((*path, key), value))
    return out


class FlatChunksLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, which keeps FlatChunks leaves (its set-up replaces every
    leaf that is not a tensor by None) and looks their boxes up by offsets."""

    def set_up_planner(self, state_dict, metadata=None, is_coordinator: bool = False) -> None:
        chunks = _chunks_in(state_dict)
        super().set_up_planner(state_dict, metadata, is_coordinator)
        for path, obj in chunks:
            node = state_dict
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = obj
            self.state_dict[".".join(path)] = obj

    def lookup_tensor(self, index: MetadataIndex) -> torch.Tensor:
        obj = self.state_dict.get(index.fqn)
        if isinstance(obj, FlatChunks):
            return obj.__get_tensor_shard__(index)
        return super().lookup_tensor(index)
