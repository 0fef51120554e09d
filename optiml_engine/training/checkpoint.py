"""Checkpoints through torch.distributed.checkpoint (DCP), written atomically.

A checkpoint is a directory `step_NNNNNNN/` holding the DCP files of the model and optimizer
(keyed by parameter name, so a later run may load them under another parallel layout), one
`rng_rank{r}.pt` per rank (tensors only, loaded with weights_only=True) and `meta.json` (step,
model config, data position). It is written under a temporary name and renamed when complete,
so a run killed during a save leaves the previous checkpoint as `latest`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from optiml_engine.errors import OptimlError

META = "meta.json"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns on every call without a process group, which one-process runs do on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def is_complete(path: Path) -> bool:
    return (path / META).is_file()


def latest_checkpoint(directory: str | Path) -> Path | None:
    directory = Path(directory)
    if not directory.is_dir():
        return None
    done = sorted(p for p in directory.glob("step_*") if p.is_dir() and is_complete(p))
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


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if not is_complete(path):
        raise OptimlError(str(path), "no complete checkpoint there (no meta.json)",
                          "point at a checkpoint directory written by optiml")
    return json.loads((path / META).read_text())


def _state_dict(model, optimizer=None) -> dict:
    """Model (and optimizer) state keyed by parameter name, the form DCP saves and reshards."""
    if optimizer is None:
        return {"model": get_state_dict(model, [])[0]}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_checkpoint(path: str | Path, model, optimizer=None, meta: dict | None = None,
                    keep_last: int | None = None) -> Path:
    """Write `path` atomically; with keep_last, delete all but the newest keep_last siblings."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    if _rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    state = _state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        full_meta = {"kind": "train" if optimizer is not None else "model", **(meta or {})}
        full_meta["model_config"] = dataclasses.asdict(model.config)
        (tmp / META).write_text(json.dumps(full_meta, indent=2))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        if keep_last:
            done = sorted(p for p in path.parent.glob("step_*") if is_complete(p))
            for old in done[:-keep_last]:
                shutil.rmtree(old)
    _barrier()
    return path


def load_checkpoint(path: str | Path, model, optimizer=None) -> dict:
    """Load model (and optimizer, if given and saved) state and this rank's RNG; return meta."""
    path = Path(path)
    meta = read_meta(path)
    with_optim = optimizer is not None and meta.get("kind") == "train"
    state = _state_dict(model, optimizer if with_optim else None)
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer if with_optim else [], model_state_dict=state["model"],
                   optim_state_dict=state["optim"] if with_optim else {},
                   options=StateDictOptions(strict=True))
    rng_file = path / f"rng_rank{_rank()}.pt"
    if with_optim and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return meta
