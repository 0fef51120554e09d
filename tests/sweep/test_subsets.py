"""data.task_subset / data.category_subset (OPT-IML §4.4) on hand-made task lists: nested for a
seed, fully supervised tasks in every subset, categories by decreasing task count with the kept
ones always in; and through a built bench, left-out tasks get no weight."""

import numpy as np
import pytest

from optiml_engine.data.mixture import BenchMixture
from optiml_engine.data.sampling import SamplingSpec
from optiml_engine.data.subsets import SubsetSpec, select_tasks
from optiml_engine.errors import OptimlError


def task(name, category="C", benchmark="superni", n_train=10, n_eval=0):
    return {"name": name, "category": category, "benchmark": benchmark, "n_train": n_train,
            "n_eval": n_eval}


# 100 training tasks, 5 of them fully supervised; plus a reasoning task and a held-out task
TASKS = ([task(f"t{i:03d}", n_eval=5 if i % 20 == 0 else 0) for i in range(100)]
         + [task("cot1", benchmark="reasoning"), task("held", n_train=0)])
SUPERVISED = {"t000", "t020", "t040", "t060", "t080"}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_task_subsets_are_nested_and_keep_the_supervised_tasks(seed):
    subsets = {k: select_tasks(TASKS, SubsetSpec(tasks=k), seed)[0] for k in (16, 32, 64, 100)}
    assert [len(s) for s in subsets.values()] == [16, 32, 64, 100]
    assert subsets[16] < subsets[32] < subsets[64] < subsets[100]
    assert all(SUPERVISED <= s for s in subsets.values())
    assert "cot1" not in subsets[100] and "held" not in subsets[100]  # mixes and eval: never
    assert subsets[100] == {f"t{i:03d}" for i in range(100)}


def test_task_subsets_depend_on_the_seed_and_are_deterministic():
    a = select_tasks(TASKS, SubsetSpec(tasks=16), 0)[0]
    assert a == select_tasks(TASKS, SubsetSpec(tasks=16), 0)[0]
    assert a != select_tasks(TASKS, SubsetSpec(tasks=16), 1)[0]
    # without keeping them the supervised tasks are drawn like the others
    free = select_tasks(TASKS, SubsetSpec(tasks=16, keep_supervised=False), 0)[0]
    assert len(free) == 16 and not SUPERVISED <= free


def test_task_subset_refuses_impossible_sizes():
    with pytest.raises(OptimlError, match="data.task_subset.*below the 5 fully supervised"):
        select_tasks(TASKS, SubsetSpec(tasks=4), 0)
    with pytest.raises(OptimlError, match="101 tasks asked, the bench has 100"):
        select_tasks(TASKS, SubsetSpec(tasks=101), 0)


def test_category_subset_orders_by_task_count_and_keeps_the_named_ones():
    counts = {"Big": 5, "Mid b": 3, "Mid a": 3, "Question Answering": 1, "Small": 2}
    tasks = [task(f"{c}-{i}", category=c) for c, n in counts.items() for i in range(n)]
    keep = ["Question Answering", "Summarization", "Dialogue Generation"]

    def categories(n):
        names, note = select_tasks(tasks, SubsetSpec(categories=n, keep_categories=keep), 0)
        return {name.rsplit("-", 1)[0] for name in names}, note

    # order: Big (5), Mid a (3, by name), Mid b (3), Small (2), Question Answering (1)
    assert categories(1)[0] == {"Big", "Question Answering"}
    assert categories(2)[0] == {"Big", "Mid a", "Question Answering"}
    assert categories(4)[0] == {"Big", "Mid a", "Mid b", "Small", "Question Answering"}
    note = categories(1)[1]
    assert "not in the bench: ['Summarization', 'Dialogue Generation']" in note


def test_the_mixture_gives_left_out_tasks_no_weight(bench_dir):
    out = bench_dir / "out"
    spec = SubsetSpec(tasks=6, keep_supervised=False)
    mix = BenchMixture(out, SamplingSpec(scheme="uniform"), seed=3, subset=spec)
    tasks = mix.bench.manifest["tasks"]
    kept = select_tasks(tasks, spec, 3)[0]
    weighted = {mix.names[i] for i in np.flatnonzero(mix.probabilities > 0)}
    assert weighted == kept and len(kept) == 6
    assert np.allclose(mix.probabilities[mix.probabilities > 0], 1 / 6)
    drawn = {mix.names[t] for _, t, _ in mix.stream.take(2000)}
    assert drawn == kept
