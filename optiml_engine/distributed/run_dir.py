"""The checkpoint directory a run owns: its lock, its leftovers, its newest good checkpoint.

A run takes `<checkpoint.dir>/.lock` (host, pid, run id) before it writes anything; a second
live run on the same directory is refused, a lock left by a dead process on this host is taken
over with a warning. Holding the lock, the run removes what dead runs left half-done: temporary
`.tmp-*` saves, `.trash-*` directories of an interrupted rotation, `step_*` directories without
`meta.json`, and restores a `.old-step_N` whose replacement never completed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path

from optiml_engine.distributed.integrity import META
from optiml_engine.errors import OptimlError

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class DirectoryLock:
    """`<directory>/.lock`, created exclusively; `release()` removes it if it is still ours."""

    def __init__(self, directory: str | Path, run_id: str, warn=print):
        self.directory, self.path = Path(directory), Path(directory) / LOCK
        self.run_id, self.warn = run_id, warn
        self.held = False

    def acquire(self) -> DirectoryLock:
        if self.directory.exists() and not self.directory.is_dir():
            raise OptimlError(f"checkpoint.dir: {self.directory}", "is a file, not a directory",
                              "point checkpoint.dir at a directory (it is created if missing)")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OptimlError(f"checkpoint.dir: {self.directory}", f"cannot be created ({e})",
                              "choose a writable directory") from None
        me = {"host": socket.gethostname(), "pid": os.getpid(), "run": self.run_id}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise OptimlError(str(self.path), "could not be taken", "retry")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            host, pid = holder["host"], int(holder["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, host, pid = None, None, None
        if holder is not None and host == socket.gethostname() and not _alive(pid):
            self.warn(f"{self.path}: taking over the lock of a dead run (pid {pid})")
        elif holder is None:
            self.warn(f"{self.path}: taking over an unreadable lock")
        else:
            raise OptimlError(
                f"checkpoint.dir: {self.directory}",
                f"another run holds it (host {host}, pid {pid}, run {holder.get('run')})",
                "use another checkpoint.dir, or delete the .lock file if that run is gone")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def release(self) -> None:
        if not self.held:
            return
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        self.held = False


def clean_leftovers(directory: str | Path, warn=print) -> list[str]:
    """Remove what dead runs left half-done in `directory` (call with its lock held)."""
    directory, done = Path(directory), []
    if not directory.is_dir():
        return done
    for old in sorted(directory.glob(".old-step_*")):
        target = directory / old.name[len(".old-"):]
        if not target.exists():  # the replacement never completed: the old one is good
            old.rename(target)
            done.append(f"restored {target.name}")
    for p in sorted(directory.iterdir()):
        stale = p.name.startswith((".tmp-", ".trash-", ".old-step_")) or (
            p.name.startswith("step_") and p.is_dir() and not (p / META).is_file())
        if stale and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}")
    for line in done:
        warn(f"{directory}: {line} (left by an interrupted run)")
    return done


def on_rank0(fn):
    """Run `fn` on global rank 0 alone; an OptimlError there is raised on every rank (so no
    rank waits in a collective for one that already gave up)."""
    import torch.distributed as dist

    from optiml_engine.distributed import state

    error = None
    if state.global_rank() == 0:
        try:
            fn()
        except OptimlError as e:
            error = (type(e), e.where, e.what, e.fix)
    if state.world_group() is not None:
        box = [error]
        dist.broadcast_object_list(box, src=0, group=state.world_group())
        error = box[0]
    if error is not None:
        cls, *args = error
        raise cls(*args)
