"""Checkpoints: one format for every layout and every caller (trainer, eval, convert).

A checkpoint is a directory `step_NNNNNNN/` (or any name the caller picks) holding

    .metadata, *.distcp   torch.distributed.checkpoint files: every tensor under its full-model
                          name and global shape (a tensor-parallel slice is saved as a DTensor
                          shard, pipeline stages contribute the names they hold, data-parallel
                          replicas are deduplicated), so any layout loads what any layout saved
    rng/rank{r}.pt        rank r's RNG streams (torch CPU and CUDA, the tensor-parallel tracker),
                          tensors only, read with weights_only=True
    meta.json             format, kind ("train" or "model"), step, layout, run id, and what the
                          caller adds (data position, loss scaler, model config)
    recipe.yaml           the resolved recipe, when the caller gives one

It is written under a temporary name and renamed when complete, so a run killed during a save
keeps its previous checkpoint. This module knows which tensors are layout slices (the
`tp_shard_dim` attribute of tensor-parallel layers) but nothing about models or optimizers.

Formats read: FORMAT, "optiml-parallel-1" (the parallel trainer's) and the unversioned
single-process one; their tensor names are the same (model.*, optim.state.<name>.exp_avg...).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from optiml_engine.distributed import state
from optiml_engine.distributed.random import get_rng_tracker
from optiml_engine.errors import OptimlError

FORMAT = "optiml-ckpt-2"
META = "meta.json"
RECIPE = "recipe.yaml"
_MESH: dict = {}


# -- layout-independent tensors ------------------------------------------------------------------

def _tp_mesh():
    group = state.tp_group()
    if id(group) not in _MESH:
        from torch.distributed.device_mesh import DeviceMesh

        device = "cuda" if torch.cuda.is_available() else "cpu"
        _MESH.clear()
        _MESH[id(group)] = DeviceMesh.from_group(group, device_type=device)
    return _MESH[id(group)]


def as_global(t: torch.Tensor, dim: int | None):
    """This rank's tensor-parallel slice along `dim` as a DTensor (dim None: replicated)."""
    if dim is None or state.tp_size() == 1:
        return t
    from torch.distributed.tensor import DTensor, Shard

    full = list(t.shape)
    full[dim] *= state.tp_size()
    return DTensor.from_local(t.contiguous(), _tp_mesh(), [Shard(dim)], run_check=False,
                              shape=torch.Size(full),
                              stride=torch.empty(full, device="meta").stride())


def as_local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def like_param(t: torch.Tensor, param):
    """`t` (shaped like this rank's `param`) under the parameter's full name and shape."""
    return as_global(t, getattr(param, "tp_shard_dim", None))


def model_state(model) -> dict:
    """This rank's weights under their full-model names, as DCP saves or loads them."""
    return {n: like_param(p.data, p) for n, p in model.named_parameters()}


# -- where checkpoints are -----------------------------------------------------------------------

def is_complete(path: Path) -> bool:
    return (Path(path) / META).is_file()


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not is_complete(path):
        raise OptimlError(str(path), "no complete checkpoint there (no meta.json)",
                          "point at a checkpoint directory written by optiml")
    return json.loads((path / META).read_text())


def latest_checkpoint(directory: str | Path | None) -> Path | None:
    if directory is None or not Path(directory).is_dir():
        return None
    done = sorted(p for p in Path(directory).glob("step_*") if p.is_dir() and is_complete(p))
    return done[-1] if done else None


def resolve_load_path(load: str, directory: str | None) -> Path | None:
    """`latest` -> newest complete checkpoint in `directory` (None if there is none yet)."""
    if load == "latest":
        return latest_checkpoint(directory)
    path = Path(load)
    if not is_complete(path):
        raise OptimlError(f"checkpoint.load: {load}", "no complete checkpoint there (no meta.json)",
                          "point at a step_* directory, or use 'latest'")
    return path


# -- RNG streams ---------------------------------------------------------------------------------

def rng_state() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    out.update({f"tracker/{k}": v for k, v in get_rng_tracker().get_states().items()})
    return out


def set_rng_state(saved: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(saved["cpu"])
    if "cuda" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["cuda"])
    tracked = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("tracker/")}
    if tracked:
        get_rng_tracker().set_states(tracked)


def _rng_file(path: Path, rank: int) -> Path:
    return path / "rng" / f"rank{rank}.pt"


def load_rng(path: str | Path) -> bool:
    """Restore this rank's RNG streams from `path` if it holds this rank's file (same layout);
    returns whether it did."""
    path, rank = Path(path), state.global_rank()
    for candidate in (_rng_file(path, rank), path / f"rng_rank{rank}.pt"):  # older checkpoints
        if candidate.is_file():
            set_rng_state(torch.load(candidate, weights_only=True))
            return True
    return False


# -- writing ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns on every call without a process group, which one-process runs do on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if state.world_group() is not None:
        dist.barrier(group=state.world_group())


def layout() -> dict[str, int]:
    g = state.grid()
    return {"tp": g.tp, "pp": g.pp, "dp": g.dp, "virtual": g.virtual}


def save(path: str | Path, tensors: dict, meta: dict, *, kind: str = "train",
         with_rng: bool = True, recipe_yaml: str | None = None,
         keep_last: int | None = None) -> Path:
    """Write `tensors` (nested dicts of this rank's tensors / DTensors) and `meta` to `path`
    atomically; every rank of the grid calls it. With keep_last, rotate the checkpoints of this
    run (`meta["run"]`) in path's directory: never the one just written, never another run's."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    rank = state.global_rank()
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    with _quiet_single_process():
        dcp.save(tensors, checkpoint_id=str(tmp), process_group=state.world_group())
    if with_rng:
        _rng_file(tmp, rank).parent.mkdir(exist_ok=True)
        torch.save(rng_state(), _rng_file(tmp, rank))
    _barrier()
    if rank == 0:
        full = {"format": FORMAT, "kind": kind, "layout": layout(), **meta}
        (tmp / META).write_text(json.dumps(full, indent=2))
        if recipe_yaml is not None:
            (tmp / RECIPE).write_text(recipe_yaml)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        if keep_last:
            rotate(path, keep_last)
    _barrier()
    return path


def rotate(kept: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints of `kept`'s run in its directory
    (`kept` itself always stays); returns what was deleted."""
    run = read_meta(kept).get("run")
    if run is None:
        return []
    mine = []
    for p in kept.parent.glob("step_*"):
        if p != kept and p.is_dir() and is_complete(p):
            with contextlib.suppress(ValueError, OSError):
                meta = read_meta(p)
                if meta.get("run") == run:
                    mine.append((int(meta.get("step", 0)), p))
    mine.sort()
    doomed = [p for _, p in mine[:max(len(mine) - (keep_last - 1), 0)]]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


# -- reading ---------------------------------------------------------------------------------------

def load(path: str | Path, tensors: dict) -> dict:
    """Fill `tensors` (nested dicts shaped as they were saved, for this rank's part) in place
    from `path`; returns the checkpoint's meta."""
    meta = read_meta(path)
    with _quiet_single_process():
        dcp.load(tensors, checkpoint_id=str(path), process_group=state.world_group())
    return meta


def load_weights(model, path) -> dict:
    """Only the weights of a checkpoint (any format, saved under any layout) into this rank's
    part of `model`; returns the checkpoint's meta."""
    tensors = {"model": model_state(model)}
    meta = load(path, tensors)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(as_local(tensors["model"][n]))
    return meta


def save_weights(path, model, meta: dict | None = None, recipe_yaml: str | None = None) -> Path:
    """A "model" checkpoint: this rank's weights only (no optimizer, no RNG)."""
    import dataclasses

    full = {"step": 0, **(meta or {}), "model_config": dataclasses.asdict(model.config)}
    return save(path, {"model": model_state(model)}, full, kind="model", with_rng=False,
                recipe_yaml=recipe_yaml)
