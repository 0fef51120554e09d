"""One run's training, as its own process: `python -m optiml_engine.sweep.worker RUN_DIR`
(or under `torchrun ... -m optiml_engine.sweep.worker RUN_DIR`).

It trains RUN_DIR/recipe.yaml with the one trainer (resuming its latest checkpoint, if a killed
sweep left one) and writes RUN_DIR/train_cost.json: wall time, steps and target tokens (the cost
columns of the report). User errors exit 2 with one line, as `optiml train` does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from optiml_engine.errors import OptimlError

COST = "train_cost.json"


def train_run(run_dir: Path) -> dict:
    from optiml_engine.config import load_recipe
    from optiml_engine.eval.pipeline_eval import training_evaluator
    from optiml_engine.training.trainer import Trainer

    recipe = load_recipe(run_dir / "recipe.yaml")
    start = time.perf_counter()
    trainer = Trainer(recipe, make_evaluator=training_evaluator)
    first_step = trainer.step
    history = trainer.fit()
    seconds = time.perf_counter() - start
    tokens = int(sum(m["target_tokens"] for m in history))
    cost = {"steps": len(history), "resumed_at_step": first_step, "target_tokens": tokens,
            "seconds": round(seconds, 2),
            "target_tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else 0.0,
            "final_loss": round(float(history[-1]["loss"]), 6) if history else None}
    if int(os.environ.get("RANK", "0")) == 0:
        tmp = run_dir / (COST + ".tmp")
        tmp.write_text(json.dumps(cost, indent=1) + "\n")
        tmp.replace(run_dir / COST)
    return cost


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m optiml_engine.sweep.worker RUN_DIR", file=sys.stderr)
        return 2
    try:
        train_run(Path(argv[0]))
    except OptimlError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"optiml: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
