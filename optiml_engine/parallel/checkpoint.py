"""Layout-independent checkpoints of a ParallelEngine through torch.distributed.checkpoint.

Every tensor is saved under its full-model name with its global shape: a tensor-parallel slice
becomes a DTensor sharded over the tensor-parallel mesh, pipeline stages contribute the names
they hold, data-parallel replicas are deduplicated by DCP, and ZeRO-1 shards are gathered into
per-parameter tensors first. Loading asks each rank's own slices back, so a checkpoint saved at
TP=2 PP=2 loads at TP=4, TP=1, or in one process (the "model" entries are exactly what
`training.checkpoint.load_checkpoint(path, model)` reads for a plain model).

    model.<name>                      the weights (in the model's dtype)
    optim.state.<name>.exp_avg        Adam moments (fp32)
    optim.state.<name>.exp_avg_sq
    master.<name>                     fp32 master weights (bf16/fp16 models only)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from optiml_engine.parallel import state
from optiml_engine.training import checkpoint as ckpt

FORMAT = "optiml-parallel-1"
_MESH = {}


def _tp_mesh():
    group = state.tp_group()
    key = id(group)
    if key not in _MESH:
        from torch.distributed.device_mesh import DeviceMesh

        device = "cuda" if torch.cuda.is_available() else "cpu"
        _MESH.clear()
        _MESH[key] = DeviceMesh.from_group(group, device_type=device)
    return _MESH[key]


def _global(t: torch.Tensor, param):
    """This rank's slice as a DTensor of the full parameter (or the tensor if replicated)."""
    return as_global(t, getattr(param, "tp_shard_dim", None))


def as_global(t: torch.Tensor, dim: int | None):
    """This rank's tensor-parallel slice along `dim` as a DTensor (dim None: replicated)."""
    if dim is None or state.tp_size() == 1:
        return t
    from torch.distributed.tensor import DTensor, Shard

    full = list(t.shape)
    full[dim] *= state.tp_size()
    return DTensor.from_local(t.contiguous(), _tp_mesh(), [Shard(dim)], run_check=False,
                              shape=torch.Size(full), stride=torch.empty(full, device="meta")
                              .stride())


def model_state(model) -> dict:
    """This rank's weights under their full-model names, as DCP saves or loads them."""
    return {n: _global(p.data, p) for n, p in model.named_parameters()}


def engine_state(engine, with_optimizer: bool = True) -> dict:
    """The nested state dict DCP saves or loads in place (fresh tensors for the optimizer)."""
    named = list(engine.model.named_parameters())
    out = {"model": model_state(engine.model)}
    if with_optimizer:
        per_param = engine.optimizer.param_states()
        out["optim"] = {"state": {
            n: {k: _global(s[k].clone(), p) for k in ("exp_avg", "exp_avg_sq")}
            for (n, p), s in zip(named, per_param, strict=True)}}
        if engine.dtype != torch.float32:
            out["master"] = {n: _global(s["master"].clone(), p)
                             for (n, p), s in zip(named, per_param, strict=True)}
    return out


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _rank() -> int:
    return state.global_rank()


def _barrier() -> None:
    if state.world_group() is not None:
        dist.barrier(group=state.world_group())


def save(engine, path, meta: dict, keep_last: int | None = None) -> Path:
    """Write `path` atomically (temporary name, renamed once every rank is done)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    if _rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    dcp.save(engine_state(engine), checkpoint_id=str(tmp), process_group=state.world_group())
    _barrier()
    if _rank() == 0:
        import dataclasses

        full = {"kind": "train", "format": FORMAT, "optimizer_step": engine.optimizer.step_count,
                "loss_scaler": engine.scaler.state_dict(),
                "has_master": engine.dtype != torch.float32, **meta,
                "model_config": dataclasses.asdict(engine.config)}
        (tmp / ckpt.META).write_text(json.dumps(full, indent=2))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        if keep_last:
            done = sorted(p for p in path.parent.glob("step_*") if ckpt.is_complete(p))
            for old in done[:-keep_last]:
                shutil.rmtree(old)
    _barrier()
    return path


def load(engine, path) -> dict:
    """Load weights (and optimizer state, when the checkpoint has it) into this rank's part."""
    path = Path(path)
    meta = ckpt.read_meta(path)
    with_optim = meta.get("format") == FORMAT
    sd = engine_state(engine, with_optimizer=with_optim)
    if "master" in sd and not meta.get("has_master"):
        del sd["master"]  # saved from an fp32 model: the weights are the master weights
    dcp.load(sd, checkpoint_id=str(path), process_group=state.world_group())
    _copy_weights(engine.model, sd["model"])
    named = list(engine.model.named_parameters())
    if with_optim:
        states = []
        for n, p in named:
            s = {k: _local(sd["optim"]["state"][n][k]) for k in ("exp_avg", "exp_avg_sq")}
            s["master"] = _local(sd["master"][n]) if "master" in sd else p.detach().float()
            states.append(s)
        engine.optimizer.load_param_states(states, meta.get("optimizer_step", 0))
        engine.scaler.load_state_dict(meta.get("loss_scaler", {}))
    else:  # a plain model checkpoint (e.g. optiml convert hf2engine): fresh optimizer state
        engine.optimizer.load_param_states(
            [{"master": p.detach().float(), "exp_avg": torch.zeros_like(p, dtype=torch.float32),
              "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32)} for _, p in named], 0)
    return meta


def _copy_weights(model, loaded: dict) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(_local(loaded[n]))


def load_weights(model, path) -> dict:
    """Only the weights of a checkpoint (saved under any layout, or by one process) into this
    rank's part of `model`, sharded under the current grid: what evaluation needs, with no
    optimizer to build. Returns the checkpoint's meta."""
    path = Path(path)
    meta = ckpt.read_meta(path)
    sd = {"model": model_state(model)}
    dcp.load(sd, checkpoint_id=str(path), process_group=state.world_group())
    _copy_weights(model, sd["model"])
    return meta
