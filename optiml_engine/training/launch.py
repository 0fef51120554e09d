"""Entry point of `optiml train`: one process, or the parallel trainer under torchrun."""

from __future__ import annotations

from optiml_engine.training.trainer import Trainer


def train(recipe) -> list[dict[str, float]]:
    from optiml_engine.parallel.trainer import ParallelTrainer, wants_parallel

    if not wants_parallel(recipe):
        return Trainer(recipe).fit()
    from optiml_engine.parallel import state

    try:
        return ParallelTrainer(recipe).fit()
    finally:
        state.destroy()
