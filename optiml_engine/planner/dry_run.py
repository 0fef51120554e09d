"""`optiml train --dry-run RECIPE [--gpus N]`: build every rank's part of the engine on the meta
device, as the real run would, and print its parameters and bytes, against the planner's count.

Each rank is built in this process under torch.distributed's "fake" process group of the job's
world size (collectives do nothing, group sizes and ranks are the real ones), by the trainer's
own path: `model.meta_init.meta_model`, then `training.engine.Engine` (shard_model, the
optimizer's flat shards) with every tensor left on the meta device, so a 175B model costs no
memory. Data-parallel replicas of a (tensor, pipeline) rank hold the same shapes: one is built.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
import torch.distributed as dist

from optiml_engine.errors import OptimlError
from optiml_engine.planner.params import local_params, model_params
from optiml_engine.planner.plan import WEIGHT_BYTES, recipe_shard, why_not

GIB = 2**30


class MetaSource:
    """A meta_init source that allocates nothing."""

    def __call__(self, name, param, layout, stats) -> torch.Tensor:
        return torch.empty(param.shape, device="meta")


@contextlib.contextmanager
def fake_world(rank: int, world: int):
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group exists already: the dry run needs its own")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        if dist.is_initialized():  # state.destroy() may have taken it down already
            dist.destroy_process_group()


def build_rank(recipe, rank: int, world: int) -> dict:
    """Parameters and bytes of global rank `rank`, built by the engine on the meta device."""
    from optiml_engine.distributed import state
    from optiml_engine.model.meta_init import meta_model
    from optiml_engine.training.engine import Engine

    p = recipe.parallel
    with fake_world(rank, world):
        grid = state.initialize(p.tp, p.pp, virtual=p.virtual_stages)
        try:
            engine = Engine(meta_model(recipe.model, recipe.train.seed), p, recipe.optim,
                            recipe.precision, recipe.train.seed, init=MetaSource(),
                            device="meta", loss_chunk_tokens=recipe.kernels.loss_chunk_tokens)
            params = list(engine.model.parameters())
            opt = engine.optimizer
            return {"rank": rank, "tp_rank": grid.tp_rank, "pp_rank": grid.pp_rank,
                    "params": sum(t.numel() for t in params),
                    "weight_bytes": sum(t.numel() * t.element_size() for t in params),
                    "optimizer_bytes": sum(t.numel() * t.element_size()
                                           for t in (opt.master, opt.exp_avg, opt.exp_avg_sq))}
        finally:
            state.destroy()


def model_shapes(recipe, say) -> None:
    """Shapes come from model.hf_path's config when it is there, else the recipe's model."""
    path = recipe.model.hf_path
    if path and (Path(path) / "config.json").is_file():
        from optiml_engine.model.hf_io import read_hf_config

        cfg = read_hf_config(path)
        cfg.dropout = recipe.model.dropout
        recipe.model = cfg
    elif path:
        say(f"model.hf_path {path} is not here: shapes from the recipe's model section")


def dry_run(recipe, gpus: int | None = None, out=print) -> int:
    p, m = recipe.parallel, recipe.model
    world = gpus or p.tp * p.pp
    if world % (p.tp * p.pp):
        raise OptimlError("optiml train --dry-run --gpus", f"{world} GPUs are not a multiple of "
                          f"tp {p.tp} x pp {p.pp}", "pass a multiple of parallel.tp x parallel.pp")
    dp = world // (p.tp * p.pp)
    model_shapes(recipe, out)
    why = why_not(recipe, p.tp, p.pp, dp, gpus_per_node=p.tp)
    if why is not None:
        raise OptimlError("recipe: parallel", f"tp {p.tp} x pp {p.pp} x dp {dp}: {why}",
                          "change the layout or the batch")
    w = WEIGHT_BYTES[recipe.precision.dtype]
    shard = recipe_shard(recipe)
    out(f"dry run: {model_params(m)['total'] / 1e9:.3f}B parameters on {world} ranks, tp {p.tp}"
        f" x pp {p.pp} x dp {dp} ({recipe.precision.dtype}, {shard}); data-parallel "
        "replicas hold the same shapes as dp rank 0")
    if shard == "zero3":  # its per-rank layout is the ZeRO-3 engine's to define
        out("dry run: zero3 shards weights over data-parallel ranks: the counts below are not "
            "compared with the planner's (its gathered-layer buffers are not modelled per rank)")
    out(f"{'rank':>5} {'tp':>3} {'pp':>3} {'parameters':>14} {'weights GiB':>12} "
        f"{'optimizer GiB':>14} {'planner':>14}")
    mismatches = []
    for pp_rank in range(p.pp):
        for tp_rank in range(p.tp):
            rank = pp_rank * dp * p.tp + tp_rank
            with contextlib.redirect_stdout(io.StringIO()):  # fake-group chatter
                r = build_rank(recipe, rank, world)
            planned = local_params(m, p.tp, p.pp, pp_rank, p.virtual_stages)
            shards = dp if shard == "zero1" else 1  # FlatAdamW: master + 2 moments per shard
            ok = shard == "zero3" or (planned == r["params"] and r["weight_bytes"] == planned * w
                                      and r["optimizer_bytes"] == 12 * -(-planned // shards))
            if not ok:
                mismatches.append(rank)
            out(f"{rank:>5} {tp_rank:>3} {pp_rank:>3} {r['params']:>14,} "
                f"{r['weight_bytes'] / GIB:>12.2f} {r['optimizer_bytes'] / GIB:>14.2f} "
                f"{planned:>14,}{'' if ok else '  MISMATCH'}")
    if mismatches:
        out(f"dry run: the planner's parameter or optimizer bytes differ on ranks {mismatches}")
        return 1
    out("dry run: every rank's parameters, weight and optimizer bytes equal the planner's "
        "(optiml plan)")
    return 0
