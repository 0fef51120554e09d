"""Build only this rank's part of an OPT model, never the whole of it.

The model is first built on the `meta` device (shapes, no storage); the training engine keeps its
pipeline stage and swaps in the tensor-parallel layers there, then `materialize` allocates the
parameters that are left, asking a source for each one's local values:

    RandomInit   OPT's initialisation: the FULL tensor from its own seeded generator
                 (`model.opt.initial_value`), one tensor at a time, sliced to this rank's
                 shard, so every layout holds the same full weights as one process
    HFInit       this rank's slices read from a Hugging Face directory (model/hf_shards.py's
                 reader: safetensors slices straight from disk, .bin memory-mapped), one
                 tensor at a time, in the parameter's dtype
    EmptyInit    uninitialised storage, for a resume whose checkpoint then fills every shard

Peak memory is then one rank's shards plus the largest full tensor (random init only).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from optiml_engine.distributed.layers import shard
from optiml_engine.distributed.state import ParallelGrid
from optiml_engine.model.opt import OPTForCausalLM, initial_value
from optiml_engine.model.parallelize import (
    apply_tensor_parallel,
    decoder_layers,
    keep_chunks,
    keep_stage,
)


@dataclass
class InitStats:
    """What materialize allocated: local parameter bytes and the largest full tensor built."""

    local_bytes: int = 0
    peak_full_bytes: int = 0
    tensors: int = 0
    sources: list = field(default_factory=list)


def meta_model(cfg, seed: int) -> OPTForCausalLM:
    """The model of `cfg` on the meta device, seeded exactly as `torch.manual_seed(seed);
    OPTForCausalLM(cfg)` (the one-process build), so RandomInit reproduces its weights."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        return OPTForCausalLM(cfg)


def _full_shape(param, tp: int) -> tuple[list[int], int | None]:
    dim = getattr(param, "tp_shard_dim", None)
    shape = list(param.shape)
    if dim is not None:
        shape[dim] *= tp
    return shape, dim


class RandomInit:
    def __init__(self, init_seed: int, std: float):
        self.init_seed, self.std = init_seed, std

    def __call__(self, name: str, param, layout: ParallelGrid, stats: InitStats) -> torch.Tensor:
        shape, dim = _full_shape(param, layout.tp)
        full = initial_value(name, shape, self.init_seed, self.std)
        stats.peak_full_bytes = max(stats.peak_full_bytes, full.numel() * full.element_size())
        return full if dim is None else shard(full, dim, layout.tp_rank, layout.tp)


class EmptyInit:
    def __call__(self, name: str, param, layout: ParallelGrid, stats: InitStats) -> torch.Tensor:
        return torch.empty(param.shape, dtype=torch.float32)


class HFInit:
    """This rank's slices of a Hugging Face OPT directory, each read when its parameter is
    materialised, straight in the parameter's dtype: the rank never holds more than its
    parameters plus one slice in flight (not all its slices in fp32 at once). With virtual
    stages, chunk c of pipeline rank r is global stage c * pp + r of pp * virtual, which is
    exactly the layers (and first/last-stage extras) that hf_shards.local_plan reads."""

    def __init__(self, path, config):
        self.path, self.config = Path(path), config
        self.reader = self.plan = None

    def _plan(self, layout: ParallelGrid) -> dict:
        from optiml_engine.model.hf_shards import _Reader, local_plan

        self.reader = _Reader(self.path)
        self.reader.check_names(self.config, f"model.hf_path: {self.path}")
        plan, stages = {}, layout.pp * layout.virtual
        for chunk in range(layout.virtual):
            plan.update(local_plan(self.config, layout.tp_rank, layout.tp,
                                   chunk * layout.pp + layout.pp_rank, stages))
        return plan

    def __call__(self, name: str, param, layout: ParallelGrid, stats: InitStats) -> torch.Tensor:
        if self.plan is None:
            self.plan = self._plan(layout)
        if name not in self.plan:
            raise KeyError(f"{name} is not among the slices of {self.path} this rank reads")
        read, _ = self.plan.pop(name)
        return read(self.reader, param.dtype)


def hf_meta_model(path, dropout: float) -> tuple[OPTForCausalLM, HFInit]:
    from optiml_engine.model.hf_io import read_hf_config

    cfg = read_hf_config(path)
    cfg.dropout = dropout
    with torch.device("meta"):
        model = OPTForCausalLM(cfg)
    return model, HFInit(path, model.config)


def materialize(model: nn.Module, source, layout: ParallelGrid, device=None) -> InitStats:
    """Replace every meta parameter of `model` (in place) by real storage on `device` filled by
    `source(name, param, layout, stats)`; attributes such as tp_shard_dim are kept."""
    stats = InitStats()
    done: dict[int, nn.Parameter] = {}
    with torch.no_grad():
        for prefix, module in model.named_modules():
            for key, p in list(module._parameters.items()):
                if p is None or not p.is_meta:
                    continue
                if id(p) not in done:
                    name = f"{prefix}.{key}" if prefix else key
                    value = source(name, p, layout, stats)
                    if tuple(value.shape) != tuple(p.shape):
                        raise ValueError(f"{name}: source gave {tuple(value.shape)}, the "
                                         f"local parameter is {tuple(p.shape)}")
                    new = nn.Parameter(value.to(device=device, dtype=p.dtype),
                                       requires_grad=p.requires_grad)
                    new.__dict__.update(p.__dict__)
                    done[id(p)] = new
                    stats.local_bytes += new.numel() * new.element_size()
                    stats.tensors += 1
                module._parameters[key] = done[id(p)]
        for prefix, module in model.named_modules():
            for key, b in module._buffers.items():
                if b is not None and b.is_meta:
                    raise ValueError(f"buffer {prefix}.{key} is still on the meta device")
    stats.sources.append(type(source).__name__)
    return stats


def shard_model(model, layout: ParallelGrid, tp_group, sequence_parallel: bool, source=None,
                device=None) -> tuple[list[list[nn.Module]], InitStats | None]:
    """Keep this rank's pipeline stage (or virtual-stage chunks) and tensor-parallel slices of
    `model`, in place; a model on the meta device is sharded there and then materialised by
    `source` (default: OPT's random init from its seed). Returns the layers of each chunk and
    the materialisation stats (None for a model that was already real)."""
    on_meta = any(p.is_meta for p in model.parameters())
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        apply_tensor_parallel(model, tp_group, sequence_parallel)
        if layout.virtual > 1:
            chunks = keep_chunks(model, layout.pp_rank, layout.pp, layout.virtual)
        else:
            if layout.pp > 1:
                keep_stage(model, layout.pp_rank, layout.pp)
            chunks = [decoder_layers(model)]
    stats = None
    if on_meta:  # the chunks hold modules, whose parameters are replaced in place
        source = source or RandomInit(model.init_seed, model.config.init_std)
        stats = materialize(model, source, layout, device)
    return chunks, stats


def build_local_model(recipe, resuming: bool):
    """(meta model, source) for the parallel trainer: the HF directory's slices, OPT's random
    init from train.seed, or nothing at all when a checkpoint will fill the shards."""
    if recipe.model.hf_path:
        model, source = hf_meta_model(recipe.model.hf_path, recipe.model.dropout)
    else:
        model = meta_model(recipe.model, recipe.train.seed)
        source = RandomInit(model.init_seed, model.config.init_std)
    return model, (EmptyInit() if resuming else source)
