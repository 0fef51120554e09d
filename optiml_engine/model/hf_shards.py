"""`optiml convert hf2engine --tp T --pp P`: shard a Hugging Face OPT directory into an engine
checkpoint without any process holding the whole model.

Run it under torchrun with T x P processes (`torchrun --nproc_per_node T*P -m optiml_engine
convert hf2engine --hf DIR --out CKPT --tp T --pp P`): each rank reads only the slices of its
pipeline stage and tensor-parallel rank (safetensors reads slices from disk; a .bin is memory-
mapped) and the ranks write one DCP checkpoint together. Like every engine checkpoint it loads
under any layout. With T = P = 1 it runs in one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch.distributed as dist

from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.distributed import state
from optiml_engine.distributed.pipeline import stage_layer_range
from optiml_engine.errors import OptimlError
from optiml_engine.model.hf_io import fuse_qkv, load_bin, read_hf_config, safetensors_shards
from optiml_engine.model.parallelize import check_divisible


class _Reader:
    """Slices of HF tensors, read lazily: name -> tensor[rows] or tensor[:, cols]."""

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
            if not (path / "pytorch_model.bin").is_file():
                raise OptimlError(str(path), "no model.safetensors or pytorch_model.bin",
                                  "point at a Hugging Face OPT directory")
            self.bin = load_bin(path / "pytorch_model.bin", mmap=True)

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

    def read(self, name: str, rows: slice = slice(None), cols: slice | None = None):
        key = self._name(name)
        if self.bin is not None:
            t = self.bin[key][rows]
            return (t[:, cols] if cols is not None else t).clone().float()
        view = self.files[key].get_slice(key)
        t = view[rows, cols] if cols is not None else view[rows]
        return t.float()


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


def local_weights(reader: _Reader, cfg, tp_rank: int, tp: int, stage: int, pp: int) -> dict:
    """{engine name: (this rank's slice, tensor-parallel shard dim or None)}."""
    out = {}
    first, last = stage == 0, stage == pp - 1
    vocab = _chunk(cfg.vocab_size, tp_rank, tp)
    if first or last:
        out["decoder.embed_tokens.weight"] = (reader.read("decoder.embed_tokens.weight", vocab),
                                              0)
    if first:
        out["decoder.embed_positions.weight"] = (reader.read("decoder.embed_positions.weight"),
                                                 None)
        if cfg.word_embed_proj_dim != cfg.hidden_size:
            out["decoder.project_in.weight"] = (reader.read("decoder.project_in.weight"), None)
    if last:
        if cfg.pre_layer_norm:
            for kind in ("weight", "bias"):
                name = f"decoder.final_layer_norm.{kind}"
                out[name] = (reader.read(name), None)
        if cfg.word_embed_proj_dim != cfg.hidden_size:
            out["decoder.project_out.weight"] = (reader.read("decoder.project_out.weight"), None)
    heads = cfg.num_heads // tp
    head_dim = cfg.hidden_size // cfg.num_heads
    qkv_rows = slice(tp_rank * heads * head_dim, (tp_rank + 1) * heads * head_dim)
    ffn = _chunk(cfg.ffn_hidden_size, tp_rank, tp)
    hidden = _chunk(cfg.hidden_size, tp_rank, tp)
    for i in stage_layer_range(cfg.num_layers, pp, stage):
        p = f"decoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = (reader.read(f"{p}self_attn.{x}_proj.{kind}", qkv_rows) for x in "qkv")
            out[f"{p}self_attn.qkv_proj.{kind}"] = (fuse_qkv(q, k, v, heads), 0)
            out[f"{p}fc1.{kind}"] = (reader.read(f"{p}fc1.{kind}", ffn), 0)
            for norm in ("self_attn_layer_norm", "final_layer_norm"):
                out[f"{p}{norm}.{kind}"] = (reader.read(f"{p}{norm}.{kind}"), None)
        out[f"{p}self_attn.out_proj.weight"] = (
            reader.read(f"{p}self_attn.out_proj.weight", slice(None), hidden), 1)
        out[f"{p}fc2.weight"] = (reader.read(f"{p}fc2.weight", slice(None), ffn), 1)
        out[f"{p}self_attn.out_proj.bias"] = (reader.read(f"{p}self_attn.out_proj.bias"), None)
        out[f"{p}fc2.bias"] = (reader.read(f"{p}fc2.bias"), None)
    return out


def hf_to_engine_sharded(hf_dir, out, tp: int = 1, pp: int = 1) -> Path:
    hf_dir, out = Path(hf_dir), Path(out)
    cfg = read_hf_config(hf_dir)
    check_divisible(cfg, tp, "optiml convert hf2engine: --tp")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else \
        int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and tp * pp > 1 and not state.is_initialized():
        # The checkpoint is the same for every layout: --tp/--pp only spread the reading.
        print(f"optiml convert hf2engine: one process for --tp {tp} --pp {pp}: writing the "
              "same (layout-independent) checkpoint in one pass; launch tp*pp processes "
              "with torchrun to split the reading", file=sys.stderr)
        tp = pp = 1
    owned = not state.is_initialized()
    had_group = dist.is_available() and dist.is_initialized()
    if owned:
        if world != tp * pp:
            raise OptimlError("optiml convert hf2engine", f"{world} processes for --tp {tp} "
                              f"--pp {pp}", f"launch exactly {tp * pp} processes "
                              f"(torchrun --nproc_per_node {tp * pp})")
        state.initialize(tp, pp)
    try:
        g = state.grid()
        if (g.tp, g.pp, g.dp) != (tp, pp, 1):
            raise OptimlError("optiml convert hf2engine", f"{g.world_size} processes for "
                              f"--tp {tp} --pp {pp}", f"launch exactly {tp * pp} processes")
        reader = _Reader(hf_dir)
        reader.check_names(cfg, f"optiml convert hf2engine: {hf_dir}")
        weights = local_weights(reader, cfg, g.tp_rank, tp, g.pp_rank, pp)
        model = {name: ckpt.as_global(t, dim) for name, (t, dim) in weights.items()}
        ckpt.save(out, {"model": model}, {"step": 0, "source": str(hf_dir),
                                          "model_config": dataclasses.asdict(cfg)},
                  kind="model", with_rng=False)
    finally:
        if owned:
            state.destroy(keep_process_group=had_group)
    return out


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
