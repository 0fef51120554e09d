"""`optiml bench train --realistic`: the synthetic instruction-like profile and the orders."""

import numpy as np
import pytest

from optiml_engine.benchmarks.realistic import grouped_by_length, random_order, realistic_examples


def test_examples_are_deterministic_and_instruction_like():
    a, b = realistic_examples(7, 2000), realistic_examples(7, 2000)
    assert a == b and a != realistic_examples(8, 2000)
    lengths = np.array([len(s) + len(t) + 2 for s, t in a])
    targets = sum(len(t) + 1 for _, t in a)
    assert np.mean(lengths < 300) > 0.9 and lengths.max() > 1024 and lengths.max() <= 2048
    assert 0.04 < targets / lengths.sum() < 0.08
    assert all(3 <= i < 50272 for s, t in a[:50] for i in s + t)


def test_baseline_orders_keep_the_steps_sizes_and_examples():
    steps = [[([1] * n, 1) for n in range(k, k + 10)] for k in (5, 50, 500)]
    for order in (random_order, grouped_by_length):
        out = order(steps, 4, 0)
        assert [sum(len(mb) for mb in s) for s in out] == [10, 10, 10]
        assert sorted(len(e[0]) for s in out for mb in s for e in mb) == sorted(
            len(e[0]) for s in steps for e in s)
    grouped = [len(e[0]) for s in grouped_by_length(steps, 4, 0) for mb in s for e in mb]
    assert grouped == sorted(grouped, reverse=True)  # one mega-batch: longest first


def test_profile_parts_follow_the_nearest_named_parent():
    from optiml_engine.benchmarks.profile_step import part_of

    assert part_of(["aten::index", "attention", "train_step"]) == "attention"
    assert part_of(["aten::mm", "autograd::engine::evaluate_function: AddmmBackward0",
                    "train_step"]) == "linear layers"
    assert part_of(["aten::mm", "LinearCrossEntropy", "train_step"]) == "output projection + CE"
    assert part_of(["aten::copy_", "optimizer.step", "train_step"]) == "optimizer"
    assert part_of(["aten::stack", "loader.next_step", "train_step"]) == "loader"
    assert part_of(["aten::add", "train_step"]) is None


@pytest.mark.slow
def test_realistic_quick_engine_only_prints_the_table(capsys):
    from optiml_engine.cli import main

    assert main(["bench", "train", "--realistic", "--quick", "--engine-only"]) == 0
    out = capsys.readouterr().out
    assert "| 1 timed steps after 1 warm-up, 1 interleaved rounds" in out
    assert "load average (1/5/15 min): before " in out
    row = next(line for line in out.splitlines() if line.startswith("| engine (packed) |"))
    assert row.endswith("%|") or row.endswith("% |")
