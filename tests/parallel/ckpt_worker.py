"""Workers of test_checkpoint_scaler.py: resharding on load, and a planted inf under fp16 loss
scaling, on one set of gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from harness import (
    SEED,
    micro_batches,
    optim_config,
    parallel_config,
    precision_config,
    tiny_config,
)

from optiml_engine.distributed import checkpoint as pckpt
from optiml_engine.distributed import state
from optiml_engine.model import OPTForCausalLM
from optiml_engine.optim.loss_scaler import DynamicLossScaler
from optiml_engine.training.engine import Engine

MICRO = 2


def build_engine(tp, pp, dp, sp=False, shard="none"):
    state.initialize(tp, pp, world_size=tp * pp * dp)
    if not state.in_grid():
        return None
    torch.manual_seed(SEED)
    return Engine(OPTForCausalLM(tiny_config()), parallel_config(tp, pp, sp, shard),
                          optim_config(), precision_config(), SEED)


def step(engine, batch) -> dict:
    g = state.grid()
    return engine.train_step(micro_batches(batch, g.dp_rank, g.dp, MICRO), optim_config().lr,
                             optim_config().clip_grad)


def done() -> None:
    state.destroy(keep_process_group=True)
    dist.barrier()


AFTER = 3  # steps compared after a load: lost Adam moments would show in the 2nd and 3rd


def reshard_worker(rank: int, steps, out_dir: str, saves, loads) -> None:
    """saves: layouts that train len(steps) - AFTER steps, save, then take the last AFTER;
    loads: (layout, saved-layout name) pairs that load and take the last AFTER steps."""
    results = {}
    split = len(steps) - AFTER
    for name, layout in saves.items():
        engine = build_engine(**layout)
        if engine is not None:
            for batch in steps[:split]:
                step(engine, batch)
            pckpt.save(Path(out_dir) / name, engine.tensors(), {"step": split, **engine.meta()})
            results[f"save-{name}"] = [step(engine, b)["loss"] for b in steps[split:]]
        done()
    for name, (layout, source) in loads.items():
        engine = build_engine(**layout)
        if engine is not None:
            engine.load(Path(out_dir) / source)
            results[f"load-{name}"] = [step(engine, b)["loss"] for b in steps[split:]]
        done()
    Path(out_dir, f"reshard{rank}.json").write_text(json.dumps(results))


def scaler_worker(rank: int, steps, out_dir: str) -> None:
    """tp=2 x dp=2; rank 3 plants an inf in one gradient before the first step."""
    engine = build_engine(2, 1, 2)
    engine.scaler = DynamicLossScaler(initial_scale=1024.0, hysteresis=1, growth_interval=2)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    sync = engine.sync_grads

    def planted():
        sync()
        if rank == 3:
            next(engine.model.parameters()).grad.view(-1)[0] = float("inf")

    engine.sync_grads = planted
    first = step(engine, steps[0])
    unchanged = all(torch.equal(p, before[n]) for n, p in engine.model.named_parameters())
    engine.sync_grads = sync
    second = step(engine, steps[1])
    changed = any(not torch.equal(p, before[n]) for n, p in engine.model.named_parameters())
    done()
    Path(out_dir, f"scaler{rank}.json").write_text(json.dumps(
        {"first": first, "second": second, "unchanged": unchanged, "changed": changed}))


def convert_worker(rank: int, jobs: list[tuple[str, str]]) -> None:
    from optiml_engine.model.hf_shards import hf_to_engine_sharded

    for hf_dir, out in jobs:
        hf_to_engine_sharded(hf_dir, out, tp=2, pp=2)
