"""The one grid of ranks: tensor-parallel fastest, then data-parallel, then pipeline.

    rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank

Every process group is created here, once, in the same order on every rank (torch requires
that). Nothing else creates groups. With one process, or with no process group at all, every
getter answers as for a single rank and the groups are None, which the communication helpers
treat as "nothing to do".
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch.distributed as dist

from optiml_engine.errors import OptimlError


@dataclass
class ParallelGrid:
    """The layout of the ranks (the one layout type: a single process is 1 x 1 x 1) and this
    rank's groups. `virtual`: model chunks per pipeline rank (interleaved schedule)."""

    tp: int = 1
    dp: int = 1
    pp: int = 1
    rank: int = 0
    virtual: int = 1
    groups: dict = field(default_factory=dict)  # name -> process group (or None)
    ranks: dict = field(default_factory=dict)  # name -> the ranks of this rank's group
    owned_groups: list = field(default_factory=list)  # created here, freed by destroy()

    @property
    def world_size(self) -> int:
        return self.tp * self.dp * self.pp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return (self.rank // self.tp) % self.dp

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp * self.dp)

    def rank_of(self, tp_rank: int, dp_rank: int, pp_rank: int) -> int:
        return pp_rank * self.dp * self.tp + dp_rank * self.tp + tp_rank


_GRID: ParallelGrid | None = None


def _group_lists(tp: int, dp: int, pp: int) -> dict[str, list[list[int]]]:
    """For each kind of group, the rank lists of all its instances (every rank builds all)."""
    g = ParallelGrid(tp, dp, pp)
    lists = {
        "tp": [[g.rank_of(t, d, p) for t in range(tp)] for p in range(pp) for d in range(dp)],
        "dp": [[g.rank_of(t, d, p) for d in range(dp)] for p in range(pp) for t in range(tp)],
        "pp": [[g.rank_of(t, d, p) for p in range(pp)] for d in range(dp) for t in range(tp)],
        # One model replica (tensor x pipeline): where a data-parallel copy's norm lives.
        "mp": [[g.rank_of(t, d, p) for p in range(pp) for t in range(tp)] for d in range(dp)],
    }
    # First and last stage of each pipeline share the tied embedding / output weight.
    lists["embed"] = [[r[0], r[-1]] if pp > 1 else [r[0]] for r in lists["pp"]]
    return lists


def initialize(tp: int = 1, pp: int = 1, backend: str = "auto", rank: int | None = None,
               world_size: int | None = None, virtual: int = 1,
               timeout_minutes: float | None = None) -> ParallelGrid:
    """Build the grid from torchrun's environment (or the given rank / world size).

    Initialises the default process group when there are several ranks and none exists yet.
    With an existing process group, `world_size` may be smaller than it: the grid then covers
    ranks [0, world_size) and the others only take part in creating the groups (tests use this
    to run several layouts in one set of processes). timeout_minutes: how long a collective of
    the process group this creates waits (None: torch's default).
    """
    global _GRID
    if _GRID is not None:
        raise RuntimeError("parallel state is already initialised; call destroy() first")
    have_pg = dist.is_available() and dist.is_initialized()
    full_world = dist.get_world_size() if have_pg else int(os.environ.get("WORLD_SIZE", "1"))
    world_size = full_world if world_size is None else world_size
    rank = rank if rank is not None else (
        dist.get_rank() if have_pg else int(os.environ.get("RANK", "0")))
    if world_size % (tp * pp):
        raise OptimlError("recipe: parallel.tp / parallel.pp",
                          f"tp={tp} x pp={pp} does not divide the {world_size} processes",
                          "launch a multiple of tp*pp processes (torchrun --nproc_per_node)")
    dp = world_size // (tp * pp)
    grid = ParallelGrid(tp, dp, pp, rank, virtual)
    names = ("tp", "dp", "pp", "mp", "embed", "world")
    grid.groups, grid.ranks = dict.fromkeys(names), {k: [0] for k in names}
    if full_world > 1:
        if not have_pg:
            if backend == "auto":
                import torch

                backend = "nccl" if torch.cuda.is_available() else "gloo"
            kwargs = {} if timeout_minutes is None else {
                "timeout": datetime.timedelta(minutes=timeout_minutes)}
            dist.init_process_group(backend, rank=rank, world_size=full_world, **kwargs)
        lists = _group_lists(tp, dp, pp)
        lists["world"] = [list(range(world_size))]
        for name, instances in lists.items():
            for ranks in instances:
                if name == "world" and world_size == full_world:
                    group = dist.group.WORLD if world_size > 1 else None
                else:
                    group = dist.new_group(ranks) if len(ranks) > 1 else None
                    if group is not None and rank in ranks:
                        grid.owned_groups.append(group)
                if rank in ranks:
                    grid.groups[name], grid.ranks[name] = group, ranks
        # Every rank takes part in the default group's first collective: NCCL requires that of
        # batch_isend_irecv, which the pipeline schedules post on it between neighbours only.
        dist.barrier()
    _GRID = grid
    return grid


def destroy(keep_process_group: bool = False) -> None:
    """Forget the grid and free its groups; also tear down the default process group unless
    keep_process_group (then another layout may be initialised on the same processes)."""
    global _GRID
    grid_, _GRID = _GRID, None
    if not (dist.is_available() and dist.is_initialized()):
        return
    if keep_process_group:
        for group in grid_.owned_groups if grid_ is not None else []:
            try:
                dist.destroy_process_group(group)
            except (ValueError, RuntimeError):  # a group this rank is not a member of
                pass
    else:
        dist.destroy_process_group()


def grid() -> ParallelGrid:
    """The grid; a single-rank one when initialize() was never called."""
    if _GRID is not None:
        return _GRID
    names = ("tp", "dp", "pp", "mp", "embed", "world")
    return ParallelGrid(groups=dict.fromkeys(names), ranks={k: [0] for k in names})


def in_grid() -> bool:
    """False on the spare ranks of a grid smaller than the process group."""
    g = grid()
    return g.rank < g.world_size


def is_initialized() -> bool:
    return _GRID is not None


def tp_rank() -> int:
    return grid().tp_rank


def tp_size() -> int:
    return grid().tp


def tp_group():
    return grid().groups.get("tp")


def dp_rank() -> int:
    return grid().dp_rank


def dp_size() -> int:
    return grid().dp


def dp_group():
    return grid().groups.get("dp")


def pp_rank() -> int:
    return grid().pp_rank


def pp_size() -> int:
    return grid().pp


def pp_group():
    return grid().groups.get("pp")


def pp_ranks() -> list[int]:
    """Global ranks of this rank's pipeline, stage 0 first (for point-to-point sends)."""
    return grid().ranks["pp"]


def mp_group():
    return grid().groups.get("mp")


def embed_group():
    return grid().groups.get("embed")


def is_first_stage() -> bool:
    return grid().pp_rank == 0


def is_last_stage() -> bool:
    g = grid()
    return g.pp_rank == g.pp - 1


def world_group():
    """Every rank of the grid (None with one rank)."""
    return grid().groups.get("world")


def global_rank() -> int:
    return grid().rank


def world_size() -> int:
    return grid().world_size
