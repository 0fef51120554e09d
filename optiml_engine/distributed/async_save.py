"""checkpoint.async_save: a checkpoint's tensors written by a background thread while training
goes on (torch.distributed.checkpoint.async_save).

The tensors are copied before `start_async_save` returns (`CopyStager`), since the next steps
change weights and optimizer state in place: what is written is the step's values. The write
runs DCP's collectives on a process group of its own (a second gloo group over the same ranks),
so they never interleave with training's on the same group. Everything after the data write
(checksums, meta.json, the rename into place, rotation) is `PendingSave.wait()`'s, on the
caller's thread, so a run killed before it keeps its previous checkpoint as `latest`: the new
one is still under its temporary name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from optiml_engine.distributed import state
from optiml_engine.distributed.flat_chunks import FlatChunks, FlatChunksSavePlanner


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A host copy (a GPU's memory is not doubled), made before this returns."""
    t = t.detach()
    if hasattr(t, "to_local"):  # a DTensor: its local slice copied, its placement kept (on
        from torch.distributed.tensor import DTensor  # the mesh's device: from_local moves it)

        return DTensor.from_local(t.to_local().clone(), t.device_mesh, t.placements,
                                  run_check=False, shape=t.shape, stride=t.stride())
    return t.to("cpu", copy=True)


def staged_copy(tree):
    """`tree` (nested dicts of tensors, DTensors and FlatChunks) with every tensor copied."""
    if isinstance(tree, dict):
        return {k: staged_copy(v) for k, v in tree.items()}
    if isinstance(tree, FlatChunks):
        out = FlatChunks([], (), tree.global_shape, ())
        out.boxes = [(o, s, _copy(t)) for o, s, t in tree.boxes]
        return out
    if isinstance(tree, torch.Tensor):
        return _copy(tree)
    return tree


class CopyStager:
    """DCP's AsyncStager protocol: the copy is made synchronously, in `stage` (DCP's default
    stager knows nothing of FlatChunks)."""

    should_synchronize_after_execute = False  # nothing is left to wait for after `stage`

    def stage(self, state_dict: dict) -> dict:
        return staged_copy(state_dict)

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        pass


class PendingSave:
    """A checkpoint being written in the background; `wait()` (every rank, together) raises
    the write's failure, if any, or finishes the checkpoint and returns its path."""

    def __init__(self, path: Path, future, finish: Callable[[], Path], group=None):
        self.path, self._future, self._finish, self._group = path, future, finish, group

    def done(self) -> bool:
        return self._future.done()

    def wait(self) -> Path:
        try:
            self._future.result()  # the background write's exception, re-raised here
        finally:
            if self._group is not None:
                dist.destroy_process_group(self._group)
                self._group = None
        return self._finish()


def _save_group():
    """A process group of the world's ranks for the background thread alone (None: one rank)."""
    world = state.world_group()
    if world is None:
        return None
    return dist.new_group(ranks=dist.get_process_group_ranks(world), backend="gloo")


def start_async_save(tensors: dict, tmp: Path, finish: Callable[[], Path],
                     path: Path) -> PendingSave:
    """Copy `tensors` now and write them to `tmp` in the background; see PendingSave."""
    group = _save_group()
    if group is None:  # DCP's thread warns that one process has no process group, on purpose
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    future = dcp.async_save(tensors, checkpoint_id=str(tmp), process_group=group,
                            planner=FlatChunksSavePlanner(), async_stager=CopyStager(),
                            no_dist=group is None)
    return PendingSave(path, future, finish, group)
