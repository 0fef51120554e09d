"""Checkpoint integrity: SHA-256 of every file (the ranks share the hashing) and the check that
no tensor about to be saved holds inf/NaN on any rank."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.distributed as dist

from optiml_engine.distributed import state

META = "meta.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and p.name != META)


def gather(obj) -> list:
    if state.world_group() is None:
        return [obj]
    out = [None] * state.world_size()
    dist.all_gather_object(out, obj, group=state.world_group())
    return out


def checksums(path: Path) -> dict[str, str]:
    """SHA-256 of every file under `path` but meta.json; the ranks share the hashing."""
    names, rank, world = _files(path), state.global_rank(), state.world_size()
    mine = {n: sha256(path / n) for n in names[rank::world]}
    return {k: v for part in gather(mine) for k, v in part.items()}


def _all_finite(t: torch.Tensor) -> bool:
    """A finite sum means every element is finite (an inf or NaN makes any sum inf or NaN):
    one pass without a mask, ~15x faster than isfinite().all(), which stalled every save; a
    sum that overflows is checked element by element."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def non_finite(tensors: dict, as_local, prefix: str = "") -> str | None:
    """The first floating tensor holding inf/NaN on any rank (its name), else None."""
    found = None
    for key, value in tensors.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found = found or non_finite(value, as_local, f"{name}.")
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and found is None:
            if not _all_finite(as_local(value)):
                found = name
    if prefix:
        return found
    names = [n for n in gather(found) if n is not None]
    return min(names) if names else None


def mismatches(path: Path, want: dict[str, str]) -> list[str]:
    """What of `path`'s files differs from the checksums `want`, over every rank."""
    names, rank, world = sorted(want), state.global_rank(), state.world_size()
    bad = []
    for name in names[rank::world]:
        try:
            if sha256(path / name) != want[name]:
                bad.append(f"{name} does not match its checksum")
        except OSError as e:
            bad.append(f"{name}: {type(e).__name__}: {e.strerror or e}")
    return sorted(b for part in gather(bad) for b in part)
