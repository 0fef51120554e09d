"""Write an engine checkpoint from a converter's per-rank slices, with no process holding the
whole model: under torchrun each of tp x pp ranks reads only its slices and the ranks write one
DCP checkpoint together (model/hf_shards.py, model/metaseq_convert.py). Like every engine
checkpoint it loads under any layout; with --tp/--pp in one process it is written in one pass.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.distributed import state
from optiml_engine.errors import OptimlError
from optiml_engine.model.parallelize import check_divisible


def write_sharded(command: str, source, out, cfg, tp: int, pp: int,
                  weights_for: Callable[[int, int, int, int], dict]) -> Path:
    """weights_for(tp_rank, tp, stage, pp) -> {engine name: (local slice, shard dim or None)};
    every rank of a tp x pp grid (made here unless the caller made one) writes its part."""
    out = Path(out)
    check_divisible(cfg, tp, f"{command}: --tp")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else \
        int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and tp * pp > 1 and not state.is_initialized():
        # The checkpoint is the same for every layout: --tp/--pp only spread the reading.
        print(f"{command}: one process for --tp {tp} --pp {pp}: writing the same "
              "(layout-independent) checkpoint in one pass; launch tp*pp processes with "
              "torchrun to split the reading", file=sys.stderr)
        tp = pp = 1
    owned = not state.is_initialized()
    had_group = dist.is_available() and dist.is_initialized()
    if owned:
        if world != tp * pp:
            raise OptimlError(command, f"{world} processes for --tp {tp} --pp {pp}",
                              f"launch exactly {tp * pp} processes "
                              f"(torchrun --nproc_per_node {tp * pp})")
        state.initialize(tp, pp)
    try:
        g = state.grid()
        if (g.tp, g.pp, g.dp) != (tp, pp, 1):
            raise OptimlError(command, f"{g.world_size} processes for --tp {tp} --pp {pp}",
                              f"launch exactly {tp * pp} processes")
        weights = weights_for(g.tp_rank, tp, g.pp_rank, pp)
        model = {name: ckpt.as_global(t, dim) for name, (t, dim) in weights.items()}
        ckpt.save(out, {"model": model}, {"step": 0, "source": str(source),
                                          "model_config": dataclasses.asdict(cfg)},
                  kind="model", with_rng=False)
    finally:
        if owned:
            state.destroy(keep_process_group=had_group)
    return out
