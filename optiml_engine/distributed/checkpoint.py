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
keeps its previous checkpoint; a step already on disk is moved aside until its replacement is in
place. meta.json, written last, holds a SHA-256 of every other file, checked on load; a
checkpoint whose tensors are not all finite is never written. This module knows which tensors
are layout slices (the `tp_shard_dim` attribute of tensor-parallel layers, the `zero3_shard` one
of data-parallel-sharded weights) but nothing about models or optimizers.

Sharded state (ZeRO-1/3 slices of weights, masters and moments) is written and read as flat
runs of each tensor (distributed/flat_chunks.py: DCP boxes under the same names and full
shapes), without all-gathering or copying it; the format is unchanged (DCP reads any chunking),
so checkpoints of every version load into every layout and sharding.

save(..., blocking=False) (checkpoint.async_save) copies the tensors and writes them from a
background thread (distributed/async_save.py); everything after the data write waits for
PendingSave.wait().

Formats read: FORMAT, "optiml-parallel-1" (the parallel trainer's) and the unversioned
single-process one; their tensor names are the same (model.*, optim.state.<name>.exp_avg...).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

from optiml_engine.distributed import integrity, state
from optiml_engine.distributed.async_save import PendingSave, start_async_save
from optiml_engine.distributed.flat_chunks import (
    FlatChunks,
    FlatChunksLoadPlanner,
    FlatChunksSavePlanner,
)
from optiml_engine.distributed.random import get_rng_tracker
from optiml_engine.errors import Diverged, OptimlError

FORMAT = "optiml-ckpt-2"
META = integrity.META  # written last: its checksums cover every other file
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


def tp_placement(param, shape) -> tuple[torch.Size, tuple[int, ...]]:
    """The full tensor's shape and this rank's offset in it, for a tensor shaped like this
    rank's part (`shape`) of `param`."""
    dim, full = getattr(param, "tp_shard_dim", None), list(shape)
    offset = [0] * len(full)
    if dim is not None and state.tp_size() > 1:
        offset[dim] = state.tp_rank() * full[dim]
        full[dim] *= state.tp_size()
    return torch.Size(full), tuple(offset)


def chunks_like_param(runs, shape, param) -> FlatChunks:
    """Flat runs of this rank's part (shaped `shape`) of `param` under its full name and shape."""
    return FlatChunks(runs, shape, *tp_placement(param, shape))


def model_state(model) -> dict:
    """This rank's weights under their full-model names, as DCP saves or loads them (a ZeRO-3
    parameter as the slice this rank keeps: `zero3_shard`, set by distributed/data_parallel)."""
    out = {}
    for n, p in model.named_parameters():
        shard = getattr(p, "zero3_shard", None)
        if shard is None:
            out[n] = like_param(p.data, p)
        else:
            buffers, b, k = shard
            out[n] = chunks_like_param(buffers.shard_runs(b, k, buffers.shard_params),
                                       b.shapes[k], p)
    return out


def _checkable(tensors: dict) -> dict:
    """`tensors` with each FlatChunks as a dict of its boxes (for the finiteness check)."""
    return {k: _checkable(v) if isinstance(v, dict) else
            dict(enumerate(v.tensors())) if isinstance(v, FlatChunks) else v
            for k, v in tensors.items()}


# -- where checkpoints are -----------------------------------------------------------------------

def is_complete(path: Path) -> bool:
    return (Path(path) / META).is_file()


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not is_complete(path):
        raise OptimlError(str(path), "no complete checkpoint there (no meta.json)",
                          "point at a checkpoint directory written by optiml")
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise OptimlError(str(path / META), f"cannot be read ({_first_line(e)})",
                          "the checkpoint is corrupt: load another one") from None
    if not isinstance(meta, dict):
        raise OptimlError(str(path / META), "is not a JSON object",
                          "the checkpoint is corrupt: load another one")
    return meta


def _first_line(e: BaseException) -> str:
    failures = getattr(e, "failures", None)  # DCP's CheckpointException: rank -> exception
    if isinstance(failures, dict) and failures:
        e = next(iter(failures.values()))
        if isinstance(e, tuple):  # (exception, its traceback frames)
            e = e[0]
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def latest_checkpoint(directory: str | Path | None, verify: bool = False,
                      skipped: list | None = None) -> Path | None:
    """The newest complete checkpoint in `directory`; with verify, the newest whose files
    match their checksums (each one passed over is appended to `skipped` as (path, why))."""
    if directory is None or not Path(directory).is_dir():
        return None
    done = sorted(p for p in Path(directory).glob("step_*") if p.is_dir() and is_complete(p))
    for path in reversed(done):
        problem = corruption(path) if verify else None
        if problem is None:
            return path
        if skipped is not None:
            skipped.append((path, problem))
    return None


def resolve_load_path(load: str, directory: str | None, verify: bool = True,
                      skipped: list | None = None) -> Path | None:
    """`latest` -> newest good checkpoint in `directory` (None if there is none yet)."""
    if load == "latest":
        return latest_checkpoint(directory, verify, skipped)
    path = Path(load)
    if not is_complete(path):
        raise OptimlError(f"checkpoint.load: {load}", "no complete checkpoint there (no meta.json)",
                          "point at a step_* directory, or use 'latest'")
    return path


# -- integrity (distributed/integrity.py) ---------------------------------------------------------

def corruption(path: str | Path) -> str | None:
    """None if every file of the checkpoint matches meta.json's checksums, else what is wrong
    (checkpoints written before checksums existed are taken as they are)."""
    path = Path(path)
    try:
        meta = read_meta(path)
    except OptimlError as e:
        return str(e)
    if meta.get("checksums") is None:
        return None
    bad = integrity.mismatches(path, meta["checksums"])
    if not bad:
        return None
    return f"{path}: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")


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
            try:
                saved = torch.load(candidate, weights_only=True)
                set_rng_state(saved)
            except Exception as e:  # a pickle refused, a truncated file, a wrong state size
                raise OptimlError(str(candidate), f"cannot be read ({_first_line(e)})",
                                  "the checkpoint is corrupt: load another one") from None
            return True
    return False


# -- writing ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns on every call without a process group, which one-process runs do on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


@contextlib.contextmanager
def _no_root_warnings():
    """DCP's loader logs a traceback on the root logger when it falls back between metadata
    layouts; a corrupt checkpoint is reported once, as one line, by `load`."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def _barrier() -> None:
    if state.world_group() is not None:
        dist.barrier(group=state.world_group())


def layout() -> dict[str, int]:
    g = state.grid()
    return {"tp": g.tp, "pp": g.pp, "dp": g.dp, "virtual": g.virtual}


def save(path: str | Path, tensors: dict, meta: dict, *, kind: str = "train",
         with_rng: bool = True, recipe_yaml: str | None = None,
         keep_last: int | None = None, blocking: bool = True) -> Path | PendingSave:
    """Write `tensors` (nested dicts of this rank's tensors / DTensors) and `meta` to `path`
    atomically; every rank of the grid calls it. Refuses (Diverged) to write non-finite values.
    With keep_last, rotate the checkpoints of this run (`meta["run"]`) in path's directory:
    never the one just written, never another run's. blocking=False (checkpoint.async_save):
    the tensors are copied now and written in the background; the returned PendingSave's
    `wait()` (every rank, together) finishes the checkpoint."""
    path = Path(path)
    bad = integrity.non_finite(_checkable(tensors), as_local)
    if bad is not None:
        raise Diverged(f"checkpoint {path}", f"{bad} holds inf/NaN: not saved",
                       "the run diverged; lower optim.lr or resume an earlier checkpoint")
    tmp = path.with_name(f".tmp-{path.name}")
    rank = state.global_rank()
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    if with_rng:  # this step's streams, before training draws from them again
        _rng_file(tmp, rank).parent.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), _rng_file(tmp, rank))
    finish = functools.partial(_finish, tmp, path, kind, copy.deepcopy(meta), recipe_yaml,
                               keep_last)
    if blocking:
        with _quiet_single_process():
            dcp.save(tensors, checkpoint_id=str(tmp), process_group=state.world_group(),
                     planner=FlatChunksSavePlanner())
        return finish()
    return start_async_save(tensors, tmp, finish, path)


def _finish(tmp: Path, path: Path, kind: str, meta: dict, recipe_yaml: str | None,
            keep_last: int | None) -> Path:
    """After every rank's tensors are in `tmp`: the recipe, checksums, meta.json (last), the
    rename into place and the rotation."""
    rank = state.global_rank()
    _barrier()
    if rank == 0 and recipe_yaml is not None:
        (tmp / RECIPE).write_text(recipe_yaml)
    _barrier()
    sums = integrity.checksums(tmp)
    if rank == 0:
        full = {"format": FORMAT, "kind": kind, "layout": layout(), **meta, "checksums": sums}
        (tmp / META).write_text(json.dumps(full, indent=2))
        _replace(tmp, path)
        if keep_last:
            rotate(path, keep_last)
    _barrier()
    return path


def _replace(new: Path, path: Path) -> None:
    """Rename `new` to `path`; an existing `path` stays on disk (as .old-*) until then."""
    old = path.with_name(f".old-{path.name}")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    new.rename(path)
    if old.exists():
        shutil.rmtree(old)


def rotate(kept: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints of `kept`'s run in its directory
    (`kept` itself always stays); returns what was deleted. Each goes to a .trash-* name first,
    so an interrupted deletion never leaves a half checkpoint that looks complete."""
    run = read_meta(kept).get("run")
    if run is None:
        return []
    mine = []
    for p in kept.parent.glob("step_*"):
        if p != kept and p.is_dir() and is_complete(p):
            with contextlib.suppress(OptimlError, ValueError, TypeError):
                meta = read_meta(p)
                if meta.get("run") == run:
                    mine.append((int(meta.get("step", 0)), p))
    mine.sort()
    doomed = [p for _, p in mine[:max(len(mine) - (keep_last - 1), 0)]]
    for p in doomed:
        trash = p.with_name(f".trash-{p.name}")
        p.rename(trash)
        shutil.rmtree(trash)
    return doomed


# -- reading ---------------------------------------------------------------------------------------

def load(path: str | Path, tensors: dict, verify: bool = True) -> dict:
    """Fill `tensors` (nested dicts shaped as they were saved, for this rank's part) in place
    from `path`; returns the checkpoint's meta. A corrupt or unreadable checkpoint, or one
    whose tensors do not fit, is one OptimlError naming it."""
    meta = read_meta(path)
    problem = corruption(path) if verify else None
    if problem is not None:
        raise OptimlError(f"checkpoint {path}", f"is corrupt: {problem}",
                          "load another checkpoint (or pass verification off to force)")
    try:
        with _quiet_single_process(), _no_root_warnings():
            dcp.load(tensors, checkpoint_id=str(path), process_group=state.world_group(),
                     planner=FlatChunksLoadPlanner())
    except (Exception, CheckpointException) as e:  # DCP wraps every reader failure alike
        raise OptimlError(f"checkpoint {path}", f"cannot be loaded ({_first_line(e)})",
                          "check that it was saved for this model (model_config in meta.json), "
                          "or load another checkpoint") from None
    return meta


def load_weights(model, path, verify: bool = True) -> dict:
    """Only the weights of a checkpoint (any format, saved under any layout) into this rank's
    part of `model`; returns the checkpoint's meta."""
    tensors = {"model": model_state(model)}
    meta = load(path, tensors, verify)
    copy_loaded_weights(model, tensors["model"])
    return meta


@torch.no_grad()
def copy_loaded_weights(model, loaded: dict) -> None:
    """Parameters <- what `load` filled in (FlatChunks were filled in place already)."""
    for n, p in model.named_parameters():
        if not isinstance(loaded[n], FlatChunks):
            p.copy_(as_local(loaded[n]))


def save_weights(path, model, meta: dict | None = None, recipe_yaml: str | None = None) -> Path:
    """A "model" checkpoint: this rank's weights only (no optimizer, no RNG)."""
    import dataclasses

    full = {"step": 0, **(meta or {}), "model_config": dataclasses.asdict(model.config)}
    return save(path, {"model": model_state(model)}, full, kind="model", with_rng=False,
                recipe_yaml=recipe_yaml)
