from types import SimpleNamespace

import pytest

from optiml_engine.optim.schedule import lr_at


def cfg(schedule="linear", warmup=2):
    return SimpleNamespace(lr=1.0, min_lr=0.0, warmup_steps=warmup, schedule=schedule)


def test_linear_warmup_then_linear_decay_to_zero():
    assert [lr_at(s, cfg(), 6) for s in range(6)] == [0.5, 1.0, 0.75, 0.5, 0.25, 0.0]


def test_cosine_and_constant():
    assert lr_at(3, cfg("cosine"), 6) == pytest.approx(0.5)  # half-way through the decay
    assert lr_at(5, cfg("constant"), 6) == 1.0
