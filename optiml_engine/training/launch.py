"""Entry point of `optiml train`: the one trainer, with the in-training evaluator handed in."""

from __future__ import annotations

from optiml_engine.training.trainer import Trainer


def train(recipe, make_evaluator=None) -> list[dict[str, float]]:
    return Trainer(recipe, make_evaluator=make_evaluator).fit()
