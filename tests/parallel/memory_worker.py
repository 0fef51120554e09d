"""Worker of test_memory.py: one rank's extra tensor bytes during a training step and a
checkpoint save, and the parameter storage it keeps, under each `parallel.shard` mode."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import torch
import torch.distributed as dist
from harness import SEED, make_steps, micro_batches, optim_config, parallel_config, precision_config

from optiml_engine.benchmarks.tensor_memory import PeakMemory, heap_in_use
from optiml_engine.config import ModelConfig
from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.distributed import state
from optiml_engine.model.meta_init import meta_model
from optiml_engine.training.engine import Engine

# Weights dominate: 4 layers of 256 wide, 2 micro-batches of one 16-token sample per rank.
CONFIG = dict(vocab_size=256, hidden_size=256, num_layers=4, num_heads=4, ffn_hidden_size=1024,
              max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
SEQ = 16


def worker(rank: int, modes: list[str], out_dir: str) -> None:
    """modes: parallel.shard values, optionally "+reduce_scatter" (gloo's reduce-scatter
    instead of its in-place all-reduce)."""
    steps = make_steps(3, 4, seq=SEQ, vocab=CONFIG["vocab_size"])
    results = {}
    for mode in ["none", *modes]:  # a first run pays the process's one-time allocations
        # (the later "none" run overwrites the first's figures)
        grid = state.initialize(1, 1, world_size=2)
        gc.collect()
        before = heap_in_use()
        shard, _, collective = mode.partition("+")
        engine = Engine(meta_model(ModelConfig(**CONFIG), SEED), parallel_config(shard=shard),
                        optim_config(), precision_config(), SEED)
        if collective == "reduce_scatter":  # what NCCL runs (gloo sums in place by default)
            engine.optimizer.buffers.in_place_sum = False
        opt = optim_config()

        def step(batch, engine=engine, dp_rank=grid.dp_rank, opt=opt):
            return engine.train_step(micro_batches(batch, dp_rank, 2, 2), opt.lr,
                                     opt.clip_grad)

        step(steps[0])  # the first step makes what every step reuses
        gc.collect()
        kept = heap_in_use() - before  # weights, gradients, Adam state: what the rank keeps
        with PeakMemory() as during_step:
            step(steps[1])
        with PeakMemory() as during_save:
            ckpt.save(Path(out_dir) / f"ckpt-{mode}", engine.tensors(), {"step": 2,
                                                                         **engine.meta()})
        results[mode] = {"step": during_step.peak, "save": during_save.peak, "kept": kept,
                         "loss": step(steps[2])["loss"]}
        with engine.full_weights():  # only rank 0 runs a forward, as in-training evaluation
            if rank == 0:
                with torch.no_grad():
                    batch = micro_batches(steps[0], 0, 2, 2)[0]
                    results[mode]["rank0_forward"] = float(engine.stage_forward(batch, None))
        del engine, step
        state.destroy(keep_process_group=True)
        dist.barrier()
    Path(out_dir, f"mem{rank}.json").write_text(json.dumps(results))
