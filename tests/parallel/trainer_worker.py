"""Worker of test_parallel_trainer.py: the real Trainer (data pipeline, loader, LR schedule,
checkpoints, RNG) under several layouts on one set of processes."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from optiml_engine.config import load_recipe
from optiml_engine.training.trainer import Trainer


def worker(rank: int, recipe_path: str, runs: dict[str, list[str]], out_dir: str) -> None:
    results = {}
    for name, overrides in runs.items():
        results[name] = Trainer(load_recipe(recipe_path, overrides), verbose=False).fit()
        dist.barrier()
    Path(out_dir, f"trainer{rank}.json").write_text(json.dumps(results))
