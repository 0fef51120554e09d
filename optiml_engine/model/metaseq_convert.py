"""`optiml convert metaseq2engine --ckpt DIR --out CKPT [--tp T --pp P]`: the released OPT /
OPT-IML metaseq weights (model/metaseq.py reads the format) as an engine checkpoint.

Under torchrun with T x P processes, tensor-parallel rank r reads only its parts, one at a time
(memory-mapped): part r when the checkpoint has T parts, parts 2r and 2r + 1 for the 16-part
175B release into T = 8 (generally N / T consecutive parts), or a 1 / (T / N) piece of part
r // (T / N) when T is a multiple of N; it keeps only its pipeline stage's tensors. The parts'
[K; V; Q] projections are concatenated per kind and re-fused head-major (model/opt.py). Every
rank writes its slices into one DCP checkpoint (fp32, like hf2engine's), which loads under any
layout; in one process the whole model is assembled part by part.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from optiml_engine.distributed.pipeline import stage_layer_range
from optiml_engine.errors import OptimlError
from optiml_engine.model.hf_io import fuse_qkv
from optiml_engine.model.metaseq import (
    engine_names,
    find_parts,
    model_config,
    part_shapes,
    read_part,
    split_dim,
)
from optiml_engine.model.sharded_write import write_sharded

COMMAND = "optiml convert metaseq2engine"


def owned_parts(n_parts: int, tp: int, tp_rank: int) -> tuple[list[int], int, int]:
    """(the parts tensor-parallel rank `tp_rank` of `tp` reads, which piece of their
    concatenation it keeps, into how many pieces that is cut)."""
    if n_parts % tp == 0:
        k = n_parts // tp
        return list(range(tp_rank * k, (tp_rank + 1) * k)), 0, 1
    if tp % n_parts == 0:
        k = tp // n_parts
        return [tp_rank // k], tp_rank % k, k
    raise OptimlError(f"{COMMAND}: --tp {tp}", f"cannot map the checkpoint's {n_parts} "
                      "tensor-parallel parts", f"choose a --tp that divides {n_parts} or is a "
                      f"multiple of it")


def in_stage(name: str, cfg, stage: int, pp: int) -> bool:
    """Whether pipeline stage `stage` of `pp` holds the engine tensor `name`."""
    if ".layers." in name:
        return int(name.split(".")[2]) in stage_layer_range(cfg.num_layers, pp, stage)
    if name == "decoder.embed_tokens.weight":  # the last stage's tied output layer too
        return stage in (0, pp - 1)
    if name in ("decoder.embed_positions.weight", "decoder.project_in.weight"):
        return stage == 0
    return stage == pp - 1


def expected_shapes(cfg, tp: int, stage: int, pp: int) -> dict[str, tuple[int, ...]]:
    """Engine name -> this rank's local shape, from the model built on the meta device."""
    from optiml_engine.model.opt import OPTForCausalLM

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = OPTForCausalLM(cfg)  # its seed draw must not move the caller's RNG
    out = {}
    for name, p in model.state_dict().items():
        if in_stage(name, cfg, stage, pp):
            shape, dim = list(p.shape), split_dim(name)
            if dim is not None:
                shape[dim] //= tp
            out[name] = tuple(shape)
    return out


def _join(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def local_weights(parts: Iterator[tuple[int, dict]], cfg, piece: int, pieces: int, tp: int,
                  stage: int, pp: int, where: str) -> dict:
    """{engine name: (this rank's fp32 slice, shard dim or None)} from its parts (index, engine-
    named tensors), consumed one at a time. The parts' tensors stay memory-mapped views in
    their stored dtype until each slice is cut and converted once, to fp32."""
    split: dict[str, list] = {}
    replicated: dict[str, tuple[int, torch.Tensor]] = {}
    count = 0
    for index, state in parts:
        count += 1
        for name, t in state.items():
            if not in_stage(name, cfg, stage, pp):
                continue
            if split_dim(name) is None:
                if name not in replicated:
                    replicated[name] = (index, t)
                elif not torch.equal(replicated[name][1], t):
                    raise OptimlError(where, f"{name} differs between parts "
                                      f"{replicated[name][0]} and {index}, though every part "
                                      "holds all of it", "re-download the checkpoint")
            elif "qkv_proj" in name:
                split.setdefault(name, []).append(t.chunk(3))  # the part's K, V, Q
            else:
                split.setdefault(name, []).append(t)
        del state
    out = {name: (t.float(), None) for name, (_, t) in replicated.items()}
    for name, pieces_of_parts in split.items():
        if len(pieces_of_parts) != count:
            raise OptimlError(where, f"{name} is missing from some parts",
                              "re-download the checkpoint")
        dim = split_dim(name)
        if "qkv_proj" in name:
            k, v, q = (_join([p[i] for p in pieces_of_parts]).chunk(pieces)[piece]
                       for i in range(3))
            out[name] = (fuse_qkv(q, k, v, cfg.num_heads // tp).float(), 0)
        else:
            local = _join(pieces_of_parts, dim).chunk(pieces, dim)[piece]
            out[name] = (local.to(torch.float32, copy=True).contiguous(), dim)
    want = expected_shapes(cfg, tp, stage, pp)
    missing = sorted(set(want) - set(out))
    if missing:
        raise OptimlError(where, f"tensors missing: {', '.join(missing[:3])}",
                          "copy every part of the checkpoint")
    for name, shape in want.items():
        if tuple(out[name][0].shape) != shape:
            raise OptimlError(where, f"{name} has shape {tuple(out[name][0].shape)} for this "
                              f"rank, the model implies {shape}", "re-download the checkpoint")
    return out


def metaseq_to_engine_sharded(ckpt_dir, out, tp: int = 1, pp: int = 1,
                              num_heads: int | None = None) -> Path:
    parts, prefix = find_parts(ckpt_dir)
    where = f"{COMMAND}: {Path(parts[0][0]).parent / prefix}"
    shapes, cfg_dict = part_shapes(parts[0])  # nothing unflattened, no tensor read
    cfg = model_config(shapes, len(parts), cfg_dict, str(parts[0][0]), num_heads)

    def weights_for(tp_rank: int, tp: int, stage: int, pp: int) -> dict:
        indices, piece, pieces = owned_parts(len(parts), tp, tp_rank)

        def stream():
            for i in indices:  # one part in memory (mapped) at a time
                yield i, engine_names(read_part(parts[i])[0], str(parts[i][0]))

        return local_weights(stream(), cfg, piece, pieces, tp, stage, pp, where)

    return write_sharded(COMMAND, Path(parts[0][0]).parent / prefix, out, cfg, tp, pp,
                         weights_for)
