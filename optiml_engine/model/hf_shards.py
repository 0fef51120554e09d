"""`optiml convert hf2engine --tp T --pp P`: shard a Hugging Face OPT directory into an engine
checkpoint without any process holding the whole model.

Run it under torchrun with T x P processes (`torchrun --nproc_per_node T*P -m optiml_engine
convert hf2engine --hf DIR --out CKPT --tp T --pp P`): each rank reads only the slices of its
pipeline stage and tensor-parallel rank (safetensors reads slices from disk; .bin files, single
or sharded by pytorch_model.bin.index.json, are memory-mapped) and the ranks write one DCP
checkpoint together (model/sharded_write.py). Like every engine checkpoint it loads under any
layout. With T = P = 1 it runs in one process. `local_plan` says what a rank reads without
reading it: HFInit (model/meta_init.py) reads each slice when its parameter is materialised.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch

from optiml_engine.distributed.pipeline import stage_layer_range
from optiml_engine.errors import OptimlError
from optiml_engine.model.hf_io import (
    bin_shards,
    fuse_qkv,
    load_bin,
    read_hf_config,
    safetensors_shards,
)
from optiml_engine.model.sharded_write import write_sharded


class _Reader:
    """Slices of HF tensors, read lazily: name -> tensor[rows] or tensor[:, cols], one tensor
    at a time, converted to the dtype asked for (safetensors slices are read from disk; .bin
    files, single or sharded by pytorch_model.bin.index.json, are memory-mapped)."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        self.files, self.bin = {}, None
        shards = safetensors_shards(path)
        for file in shards:
            try:
                handle = safe_open(str(file), "pt")
            except (SafetensorError, OSError) as err:
                raise OptimlError(str(file), f"not a readable safetensors file ({err})",
                                  "re-download or re-export the checkpoint") from None
            self.files.update(dict.fromkeys(handle.keys(), handle))
        if not shards:
            files = bin_shards(path)
            if not files:
                raise OptimlError(str(path), "no model.safetensors or pytorch_model.bin",
                                  "point at a Hugging Face OPT directory")
            self.bin = {}
            for file in files:
                self.bin.update(load_bin(file, mmap=True))

    def keys(self) -> list[str]:
        return list(self.bin if self.bin is not None else self.files)

    def check_names(self, cfg, where: str) -> None:
        """Refuse weights the config does not declare (e.g. more layers than num_layers), so
        none is dropped silently; missing ones are refused when read."""
        expected = set(hf_names(cfg))
        unexpected = sorted(k for k in self.keys() if k.removeprefix("model.") not in expected)
        if unexpected:
            more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
            raise OptimlError(where, f"weights the config does not declare: "
                              f"{', '.join(unexpected[:3])}{more}",
                              "fix config.json (num_hidden_layers, sizes) to match the weights")

    def _name(self, name: str) -> str:
        keys = self.bin if self.bin is not None else self.files
        for candidate in (f"model.{name}", name):
            if candidate in keys:
                return candidate
        raise OptimlError(f"hf2engine: {name}", "tensor missing from the checkpoint",
                          "the checkpoint does not match its config.json")

    def read(self, name: str, rows: slice = slice(None), cols: slice | None = None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = self._name(name)
        if self.bin is not None:
            t = self.bin[key][rows]
            return (t[:, cols] if cols is not None else t).to(dtype, copy=True)
        view = self.files[key].get_slice(key)
        t = view[rows, cols] if cols is not None else view[rows]
        return t.to(dtype)


def hf_names(cfg) -> list[str]:
    """Every tensor name of a Hugging Face OPT of `cfg` (without the "model." prefix)."""
    names = ["decoder.embed_tokens.weight", "decoder.embed_positions.weight", "lm_head.weight"]
    if cfg.pre_layer_norm:
        names += ["decoder.final_layer_norm.weight", "decoder.final_layer_norm.bias"]
    if cfg.word_embed_proj_dim != cfg.hidden_size:
        names += ["decoder.project_in.weight", "decoder.project_out.weight"]
    for i in range(cfg.num_layers):
        for module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                       "self_attn.out_proj", "self_attn_layer_norm", "fc1", "fc2",
                       "final_layer_norm"):
            names += [f"decoder.layers.{i}.{module}.weight", f"decoder.layers.{i}.{module}.bias"]
    return names


def _chunk(n: int, rank: int, size: int) -> slice:
    return slice(rank * n // size, (rank + 1) * n // size)


Read = Callable[["_Reader", torch.dtype], torch.Tensor]


def local_plan(cfg, tp_rank: int, tp: int, stage: int,
               pp: int) -> dict[str, tuple[Read, int | None]]:
    """{engine name: (read(reader, dtype) -> this rank's slice, tensor-parallel shard dim or
    None)}: nothing is read until a slice's function is called."""
    plan: dict[str, tuple[Read, int | None]] = {}

    def take(name: str, dim, hf_name=None, rows=slice(None), cols=None):
        plan[name] = (lambda r, dtype: r.read(hf_name or name, rows, cols, dtype), dim)

    first, last = stage == 0, stage == pp - 1
    projected = cfg.word_embed_proj_dim != cfg.hidden_size
    if first or last:
        take("decoder.embed_tokens.weight", 0, rows=_chunk(cfg.vocab_size, tp_rank, tp))
    if first:
        take("decoder.embed_positions.weight", None)
        if projected:
            take("decoder.project_in.weight", None)
    if last:
        if cfg.pre_layer_norm:
            for kind in ("weight", "bias"):
                take(f"decoder.final_layer_norm.{kind}", None)
        if projected:
            take("decoder.project_out.weight", None)
    heads = cfg.num_heads // tp
    head_dim = cfg.hidden_size // cfg.num_heads
    qkv_rows = slice(tp_rank * heads * head_dim, (tp_rank + 1) * heads * head_dim)
    ffn = _chunk(cfg.ffn_hidden_size, tp_rank, tp)
    hidden = _chunk(cfg.hidden_size, tp_rank, tp)
    for i in stage_layer_range(cfg.num_layers, pp, stage):
        p = f"decoder.layers.{i}."
        for kind in ("weight", "bias"):
            names = [f"{p}self_attn.{x}_proj.{kind}" for x in "qkv"]
            plan[f"{p}self_attn.qkv_proj.{kind}"] = (
                lambda r, dtype, names=names: fuse_qkv(
                    *(r.read(n, qkv_rows, dtype=dtype) for n in names), heads), 0)
            take(f"{p}fc1.{kind}", 0, rows=ffn)
            for norm in ("self_attn_layer_norm", "final_layer_norm"):
                take(f"{p}{norm}.{kind}", None)
        take(f"{p}self_attn.out_proj.weight", 1, cols=hidden)
        take(f"{p}fc2.weight", 1, cols=ffn)
        take(f"{p}self_attn.out_proj.bias", None)
        take(f"{p}fc2.bias", None)
    return plan


def local_weights(reader: _Reader, cfg, tp_rank: int, tp: int, stage: int, pp: int,
                  dtype: torch.dtype = torch.float32) -> dict:
    """{engine name: (this rank's slice, tensor-parallel shard dim or None)}, all read now."""
    return {name: (read(reader, dtype), dim)
            for name, (read, dim) in local_plan(cfg, tp_rank, tp, stage, pp).items()}


def hf_to_engine_sharded(hf_dir, out, tp: int = 1, pp: int = 1) -> Path:
    hf_dir = Path(hf_dir)
    cfg = read_hf_config(hf_dir)
    command = "optiml convert hf2engine"

    def weights_for(tp_rank: int, tp: int, stage: int, pp: int) -> dict:
        reader = _Reader(hf_dir)
        reader.check_names(cfg, f"{command}: {hf_dir}")
        return local_weights(reader, cfg, tp_rank, tp, stage, pp)

    return write_sharded(command, hf_dir, out, cfg, tp, pp, weights_for)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optiml convert hf2engine", description=__doc__)
    parser.add_argument("--hf", required=True, help="Hugging Face OPT directory")
    parser.add_argument("--out", required=True, help="engine checkpoint directory to write")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel shards")
    parser.add_argument("--pp", type=int, default=1, help="pipeline stages")
    args = parser.parse_args(argv)
    hf_to_engine_sharded(args.hf, args.out, args.tp, args.pp)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {args.out}")
    return 0
