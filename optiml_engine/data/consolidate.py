"""Turn the tasks read from every source into one bench: categories, de-duplication, caps and the
three held-out levels. Each step returns what it dropped and why, for the build report."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field

from ..errors import OptimlError
from .bench_config import BenchConfig
from .task import Task

TRAIN, HELDOUT_CATEGORY, HELDOUT_TASK = "train", "heldout_category", "heldout_task"
TRAIN_ONLY_BENCHMARKS = {"pretraining", "dialogue"}  # mixes, never evaluated


@dataclass
class Skipped:
    where: str
    reason: str
    benchmark: str = ""  # of a task removed by a bench rule (dedup, excluded, leakage)


@dataclass
class Consolidated:
    tasks: list[Task]
    split: dict[str, str]  # task name -> train / heldout_category / heldout_task
    eval_ids: dict[str, list[str]] = field(default_factory=dict)  # task -> held-out instance ids
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def map_categories(tasks: list[Task], cfg: BenchConfig) -> tuple[list[Task], list[Skipped]]:
    """Super-NI categories are the base taxonomy; other tasks look up the config table by task
    name, then dataset, then benchmark. An unmapped task fails the build or is skipped."""
    kept, skipped = [], []
    for task in tasks:
        # a task's own category (Super-NI, or a record's `category`) yields only to its name
        keys = (task.name,) if task.category else (task.name, task.dataset, task.benchmark)
        for key in keys:
            if key in cfg.categories:
                task.category = cfg.categories[key]
                break
        if task.category:
            kept.append(task)
            continue
        what = f"no category for task {task.name} (dataset {task.dataset or '?'})"
        if cfg.on_unmapped == "fail":
            raise OptimlError(f"{cfg.path}: categories", f"{what}, read from {task.source}",
                              "map the task or its dataset in `categories`, or set "
                              "on_unmapped: skip")
        skipped.append(Skipped(task.source or task.name, what))
    return kept, skipped


def dataset_key(task: Task, aliases: dict[str, str]) -> str:
    name = aliases.get(task.dataset, task.dataset)
    return re.sub(r"[^0-9a-z]+", "", name.lower())


def dedup_datasets(tasks: list[Task], cfg: BenchConfig) -> tuple[list[Task], list[Skipped]]:
    """The same dataset arriving from several benchmarks (`dedup.policy`):

    - `one_copy`: kept from one benchmark only, the first in `dedup.prefer`, else the first
      source in the config;
    - `paper` (OPT-IML §2.1): kept in every benchmark (Super-NI, PromptSource and FLAN copies
      alike), except that a task of a `dedup.drop_from` benchmark (CrossFit, ExMix, T5) is
      dropped when its dataset appears in any other benchmark ("we only kept tasks from the
      CrossFit, ExMix and T5 collections that do not appear in any other benchmarks")."""
    if cfg.dedup_policy == "paper":
        return _dedup_paper(tasks, cfg)
    order = cfg.prefer + [s.name for s in cfg.sources if s.name not in cfg.prefer]
    rank = {name: i for i, name in enumerate(order)}
    owner: dict[str, str] = {}
    for task in tasks:
        key = dataset_key(task, cfg.aliases)
        if not key or task.benchmark in TRAIN_ONLY_BENCHMARKS:
            continue
        best = owner.get(key)
        if best is None or rank.get(task.benchmark, len(rank)) < rank.get(best, len(rank)):
            owner[key] = task.benchmark
    kept, skipped = [], []
    for task in tasks:
        key = dataset_key(task, cfg.aliases)
        if key in owner and owner[key] != task.benchmark and task.benchmark not in \
                TRAIN_ONLY_BENCHMARKS:
            skipped.append(Skipped(task.name, f"duplicate: dataset {task.dataset} is kept from "
                                              f"benchmark {owner[key]}", task.benchmark))
        else:
            kept.append(task)
    return kept, skipped


def _dedup_paper(tasks: list[Task], cfg: BenchConfig) -> tuple[list[Task], list[Skipped]]:
    benchmarks: dict[str, set[str]] = defaultdict(set)
    for task in tasks:
        key = dataset_key(task, cfg.aliases)
        if key and task.benchmark not in TRAIN_ONLY_BENCHMARKS:
            benchmarks[key].add(task.benchmark)
    kept, skipped = [], []
    for task in tasks:
        key = dataset_key(task, cfg.aliases)
        others = sorted(benchmarks.get(key, set()) - {task.benchmark})
        if task.benchmark in cfg.dedup_drop_from and others:
            skipped.append(Skipped(task.name, f"duplicate: dataset {task.dataset} of "
                                              f"{task.benchmark} also in {', '.join(others)} "
                                              "(paper §2.1)", task.benchmark))
        else:
            kept.append(task)
    return kept, skipped


SUPERNI_EXCLUDED = "excluded"  # meta["split"] of a task listed in excluded_tasks.txt


def drop_excluded(tasks: list[Task], cfg: BenchConfig) -> tuple[list[Task], list[Skipped]]:
    """Data-source separation (§2.3, following Super-NI): with `leakage.superni_excluded: drop`,
    a Super-NI task listed in `splits/default/excluded_tasks.txt` (built from the same data
    source as a test task) is neither trained nor evaluated. `keep` treats it as any task."""
    if cfg.leakage.superni_excluded != "drop":
        return tasks, []
    kept, skipped = [], []
    for task in tasks:
        if task.meta.get("split") == SUPERNI_EXCLUDED:
            skipped.append(Skipped(task.name, "excluded: listed in Super-NI's excluded_tasks.txt "
                                              "(same data source as a test task, §2.3)",
                                   task.benchmark))
        else:
            kept.append(task)
    return kept, skipped


def cap_instances(task: Task, cap: int, seed: int) -> int:
    """Drop repeated inputs, then keep a seeded subset of at most `cap` instances (in their
    original order). Returns how many were dropped."""
    before = len(task.instances)
    seen: set[str] = set()
    unique = []
    for inst in task.instances:
        if inst.input not in seen or not inst.input:
            seen.add(inst.input)
            unique.append(inst)
    if len(unique) > cap:
        keep = sorted(random.Random(f"{seed}:cap:{task.name}").sample(range(len(unique)), cap))
        unique = [unique[i] for i in keep]
    task.instances = unique
    return before - len(unique)


def listed_dataset(task: Task, listed: set[str], aliases: dict[str, str]) -> str | None:
    """The entry of `listed` (normalised dataset keys) that names the task's dataset, matched on
    the whole name or its first `/` part (`race` names PromptSource's `race/high`)."""
    for key in (dataset_key(task, aliases),
                dataset_key(Task("", "", "", "", [], dataset=task.dataset.split("/")[0]),
                            aliases)):
        if key and key in listed:
            return key
    return None


def _dataset_keys(names: list[str], aliases: dict[str, str]) -> set[str]:
    return {dataset_key(Task("", "", "", "", [], dataset=n), aliases) for n in names}


def eval_roles(result: Consolidated, cfg: BenchConfig) -> dict[str, str]:
    """dev or test, for every task with evaluation instances (any level): the validation set of
    §2.3 / Table 15 is the tasks of `held_out.dev_categories` and of `held_out.dev_datasets`
    (matched like the level datasets); every other evaluation task is test."""
    dev = _dataset_keys(cfg.held_out.dev_datasets, cfg.aliases)
    roles = {}
    for task in result.tasks:
        if result.eval_ids.get(task.name):
            is_dev = (task.category in cfg.held_out.dev_categories
                      or listed_dataset(task, dev, cfg.aliases))
            roles[task.name] = "dev" if is_dev else "test"
    return roles


def assign_levels(tasks: list[Task], cfg: BenchConfig) -> Consolidated:
    """The three levels (§2.3): 1. held-out categories (`held_out.categories`) and datasets
    evaluated as held out whatever their category (`held_out.level1_datasets`); 2. held-out
    tasks of seen categories (`held_out.tasks`, `level2_datasets`, `superni_test_split`,
    `tasks_per_category`); 3. held-out instances of training tasks: `held_out.level3: random`
    holds out `held_out.instances` seeded random instances of each; `source_splits` holds out
    the instances of the original validation / test splits where the source says which split
    a row came from (record files named train / validation / test, a seq2seq record's `split`)
    and falls back to `random` for a task whose format has no split (Super-NI)."""
    held = cfg.held_out
    level1 = _dataset_keys(held.level1_datasets, cfg.aliases)
    level2 = _dataset_keys(held.level2_datasets, cfg.aliases)
    matched: set[str] = set()
    names = {t.name for t in tasks}
    unknown = [n for n in held.tasks if n not in names]
    out = Consolidated(tasks=tasks, split={})
    if unknown:
        out.notes.append(f"held_out.tasks not in the bench (ignored): {', '.join(unknown)}")
    categories = {t.category for t in tasks}
    missing = [c for c in held.categories if c not in categories]
    if missing:
        out.notes.append(f"held-out categories with no task in the bench: {', '.join(missing)}")
    by_category: dict[str, list[Task]] = defaultdict(list)
    for task in tasks:
        if task.benchmark in TRAIN_ONLY_BENCHMARKS:
            out.split[task.name] = TRAIN
        elif task.category in held.categories:
            out.split[task.name] = HELDOUT_CATEGORY
            matched.update(k for k in [listed_dataset(task, level1 | level2, cfg.aliases)] if k)
        elif key := listed_dataset(task, level1, cfg.aliases):
            out.split[task.name] = HELDOUT_CATEGORY
            matched.add(key)
        else:
            by_category[task.category].append(task)
    partial = {}
    for group in by_category.values():
        for task in group:
            if key := listed_dataset(task, level2, cfg.aliases):
                partial[task.name] = key
                matched.add(key)
    unmatched = sorted((level1 | level2) - matched)
    if unmatched:
        out.notes.append("held_out level1/level2 datasets with no task in the bench: "
                         + ", ".join(unmatched))
    rng = random.Random(f"{cfg.seed}:heldout-tasks")
    for category in sorted(by_category):
        group = sorted(by_category[category], key=lambda t: t.name)
        chosen = {t.name for t in group if t.name in held.tasks or t.name in partial or (
            held.superni_test_split and t.meta.get("split") == "test")}
        if held.tasks_per_category and len(group) > 1:
            free = [t.name for t in group if t.name not in chosen]
            want = min(held.tasks_per_category, len(group) - 1) - len(chosen)
            chosen.update(rng.sample(free, max(0, min(want, len(free)))))
        if len(chosen) == len(group):
            out.notes.append(f"category {category}: every task is held out, so it is "
                             "effectively a held-out category")
        for t in group:
            out.split[t.name] = HELDOUT_TASK if t.name in chosen else TRAIN
    for task in tasks:
        ids = [i.id for i in task.instances]
        if out.split[task.name] != TRAIN:
            eval_ids = ids
        elif task.benchmark in TRAIN_ONLY_BENCHMARKS:
            eval_ids = []
        elif held.level3 == "source_splits" and task.meta.get("instance_splits"):
            # §2.3: "for a subset of the training tasks, we hold out the validation and test
            # sets from the original data release": the instances read from validation / test
            # files (or records marked so) are level 3; a task with only train rows has none
            splits = task.meta["instance_splits"]
            eval_ids = [i for i in ids if splits.get(i) in ("validation", "test")]
        else:  # `random`, or a task whose format carries no split (Super-NI)
            count = int(held.instances) if held.instances >= 1 else round(held.instances * len(ids))
            count = min(count, len(ids) - 1) if len(ids) > 1 else 0
            eval_ids = random.Random(f"{cfg.seed}:heldout-instances:{task.name}").sample(ids,
                                                                                      count)
        out.eval_ids[task.name] = eval_ids  # never trained on; eval may score a prefix
    return out
