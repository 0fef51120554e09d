"""Training-task subsets for the scaling studies (OPT-IML §4.4): `data.task_subset` and
`data.category_subset`.

Tasks: "we randomly sample 16, 64, 256, and 1024 sets of tasks such that smaller sets are subset of
bigger sets, and fully supervised tasks are always selected". The eligible tasks (the training
tasks of the instruction benchmarks, not the reasoning / pre-training / dialogue mixes) are put in
one order drawn from the seed; a subset of k is the fully supervised tasks, then the first others
of that order up to k. Hence nested for one seed.

Categories: "we order the clusters based on the decreasing order of the number of tasks present in
each cluster and select the first 4, 16, 64, and 93 (i.e., all) clusters. Additionally, we make
sure that Question Answering, Summarization, and Dialogue Generation clusters are always
represented". Ties in the count are broken by name. When both keys are set the category subset is
taken first and the task subset drawn inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import OptimlError
from .sampling import MIX_GROUPS

SUBSET_STREAM = 0x5B5E7  # the seed stream of the task order (never reused elsewhere)


@dataclass
class SubsetSpec:
    tasks: int | None = None
    keep_supervised: bool = True
    categories: int | None = None
    keep_categories: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.tasks is not None or self.categories is not None


def eligible(task: dict) -> bool:
    return task["benchmark"] not in MIX_GROUPS and task.get("n_train", 0) > 0


def fully_supervised(task: dict) -> bool:
    """A training task with level-3 (held-out instance) evaluation data."""
    return task.get("n_eval", 0) > 0


def category_order(tasks: list[dict]) -> list[str]:
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t["category"]] = counts.get(t["category"], 0) + 1
    return sorted(counts, key=lambda c: (-counts[c], c))


def select_tasks(tasks: list[dict], spec: SubsetSpec, seed: int) -> tuple[set[str], str]:
    """(names of the eligible tasks to train on, a one-line note saying what was chosen)."""
    pool = [t for t in tasks if eligible(t)]
    notes = []
    if spec.categories is not None:
        order = category_order(pool)
        kept = set(order[:spec.categories])
        present = [c for c in spec.keep_categories if c in order]
        missing = [c for c in spec.keep_categories if c not in order]
        kept |= set(present)
        pool = [t for t in pool if t["category"] in kept]
        notes.append(f"{len(kept)} of {len(order)} categories (first {spec.categories} by task "
                     f"count + kept {present})" + (f"; not in the bench: {missing}"
                                                   if missing else ""))
    if spec.tasks is not None:
        always = sorted(t["name"] for t in pool if spec.keep_supervised and fully_supervised(t))
        others = sorted(t["name"] for t in pool if t["name"] not in set(always))
        if spec.tasks > len(pool):
            raise OptimlError("recipe: data.task_subset", f"{spec.tasks} tasks asked, the bench "
                              f"has {len(pool)} eligible training tasks",
                              f"use at most {len(pool)}, or null for all")
        if spec.tasks < len(always):
            raise OptimlError("recipe: data.task_subset", f"{spec.tasks} is below the "
                              f"{len(always)} fully supervised tasks that every subset keeps",
                              f"use at least {len(always)}, or data.keep_supervised_tasks=false")
        order = np.random.default_rng([seed, SUBSET_STREAM]).permutation(len(others))
        chosen = always + [others[i] for i in order[:spec.tasks - len(always)]]
        pool = [t for t in pool if t["name"] in set(chosen)]
        notes.append(f"{spec.tasks} tasks ({len(always)} fully supervised kept, the rest drawn "
                     f"by seed {seed})")
    return {t["name"] for t in pool}, "; ".join(notes)


def subset_spec(data_cfg) -> SubsetSpec:
    """The recipe's data section as a SubsetSpec."""
    return SubsetSpec(tasks=data_cfg.task_subset, keep_supervised=data_cfg.keep_supervised_tasks,
                      categories=data_cfg.category_subset,
                      keep_categories=list(data_cfg.keep_categories))
