"""Entry point of `optiml train`: one process now; the parallel layer plugs in here."""

from __future__ import annotations

from optiml_engine.training.trainer import Trainer


def train(recipe) -> list[dict[str, float]]:
    return Trainer(recipe).fit()
