"""Worker of test_parallel_trainer.py: the real ParallelTrainer (data pipeline, loader, LR schedule,
checkpoints) under several layouts on one set of processes."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from optiml_engine.config import load_recipe
from optiml_engine.distributed import state
from optiml_engine.parallel.trainer import ParallelTrainer


def worker(rank: int, recipe_path: str, runs: dict[str, list[str]], out_dir: str) -> None:
    results = {}
    for name, overrides in runs.items():
        recipe = load_recipe(recipe_path, overrides)
        try:
            results[name] = ParallelTrainer(recipe, verbose=False).fit()
        finally:
            state.destroy(keep_process_group=True)
            dist.barrier()
    Path(out_dir, f"trainer{rank}.json").write_text(json.dumps(results))
