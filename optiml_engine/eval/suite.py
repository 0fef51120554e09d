"""What an evaluation runs on: `EvalTask`s, each a task of one level with the instances to score
and the pool its k-shot demonstrations come from.

Levels (OPT-IML Bench, named as the bench builder names them): `heldout_category` (no task of the
category was trained on), `heldout_task` (unseen tasks of seen categories) and `heldout_instance`
(unseen instances of training tasks; demonstrations then come from the task's training instances
only).

`load_suite(spec)` reads:
- a bench built by `optiml data build` (its directory or its manifest.json), through
  `optiml_engine.data.bench_store.BuiltBench.eval_sets()`;
- an eval manifest JSON: {"tasks": [{"path": task file, "format": "superni", "level": ...,
  "eval_ids": [...] (optional, default all), "demo_ids": [...] (optional)}]}, paths relative to
  the manifest;
- `added_suite("FORMAT=PATH[@LEVEL]")`: the benchmarks the paper adds (§6.1): MMLU, BIG-Bench
  Hard and RAFT files in their official layouts (optiml_engine/data/sources/{mmlu,bbh,raft}.py),
  evaluated beside a built bench (`optiml eval --suite`);
- `synthetic[:SEED]`: the embedded synthetic tasks under a fixed layout (the last two categories
  held out, the last task of every other category held out, the last 20% of every remaining task's
  instances held out), for the demo and tests before a bench is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optiml_engine.errors import OptimlError, read_json
from optiml_engine.eval.protocol import PAPER, EvalProtocol

LEVELS = ("heldout_category", "heldout_task", "heldout_instance")


@dataclass
class EvalTask:
    task: Any  # optiml_engine.data.task.Task or alike: name, benchmark, category, instances
    level: str
    instances: list  # the instances scored
    demo_pool: list | None = None  # k-shot demonstrations come from here (None: task.instances)

    @property
    def name(self) -> str:
        return self.task.name


def _by_ids(instances: list, ids: list[str] | None, where: str) -> list:
    if ids is None:
        return list(instances)
    index = {inst.id: inst for inst in instances}
    missing = [i for i in ids if i not in index]
    if missing:
        raise OptimlError(where, f"instance ids not in the task: {missing[:3]}",
                          "rebuild the manifest from the same task files")
    return [index[i] for i in ids]


_MANIFEST_FIX = 'write {"tasks": [{"path": ..., "format": ..., "level": ...}]}'


def _check_entry(entry: dict, where: str) -> None:
    """Types and values of one eval-manifest entry, each error naming the field."""
    for key in ("path", "level"):
        if key not in entry:
            raise OptimlError(where, f"missing '{key}'", f"add '{key}'")
    for key in ("path", "level", "format"):
        if key in entry and not isinstance(entry[key], str):
            raise OptimlError(f"{where}.{key}", f"expected a string, got {entry[key]!r}",
                              _MANIFEST_FIX)
    if entry["level"] not in LEVELS:
        raise OptimlError(f"{where}.level", f"{entry['level']!r} is not a level",
                          f"use one of {', '.join(LEVELS)}")
    for key in ("eval_ids", "demo_ids"):
        ids = entry.get(key)
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str)
                                                                  for i in ids)):
            raise OptimlError(f"{where}.{key}", "expected a list of instance id strings",
                              _MANIFEST_FIX)


def _read_eval_manifest(path: Path) -> list[EvalTask]:
    from optiml_engine.data.sources import load_tasks

    data = read_json(path, _MANIFEST_FIX)
    entries = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise OptimlError(f"{path}: tasks", "missing or not a list", _MANIFEST_FIX)
    suite = []
    for n, entry in enumerate(entries):
        where = f"{path}: tasks[{n}]"
        if not isinstance(entry, dict):
            raise OptimlError(where, "not a JSON object", _MANIFEST_FIX)
        _check_entry(entry, where)
        for task in load_tasks(path.parent / entry["path"], entry.get("format", "superni")):
            # readers of added benchmarks say which split is scored and which gives demos
            evals = _by_ids(task.instances, entry.get("eval_ids", task.meta.get("eval_ids")),
                            where)
            demos = entry.get("demo_ids", task.meta.get("demo_ids"))
            pool = _by_ids(task.instances, demos, where) if demos is not None else None
            suite.append(EvalTask(task, entry["level"], evals, pool))
    return suite


def synthetic_suite(seed: int = 0, instances_per_task: int = 50) -> list[EvalTask]:
    """The fixed interim layout over the synthetic tasks (see the module docstring)."""
    from optiml_engine.data.synthetic import synthetic_tasks

    tasks = synthetic_tasks(seed, instances_per_task)
    categories = list(dict.fromkeys(t.category for t in tasks))
    held_categories = set(categories[-2:])
    last_of_category = {t.category: t.name for t in tasks}
    suite = []
    for task in tasks:
        if task.category in held_categories:
            suite.append(EvalTask(task, "heldout_category", list(task.instances)))
        elif last_of_category[task.category] == task.name:
            suite.append(EvalTask(task, "heldout_task", list(task.instances)))
        else:
            cut = len(task.instances) - max(1, len(task.instances) // 5)
            suite.append(EvalTask(task, "heldout_instance", task.instances[cut:],
                                  task.instances[:cut]))
    return suite


def load_suite(spec: str) -> list[EvalTask]:
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return synthetic_suite(int(spec.partition(":")[2] or 0))
    path = Path(spec)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise OptimlError(f"--bench {spec}", "no manifest there",
                          "pass a bench manifest.json (or its directory), or 'synthetic'")
    data = read_json(path, "rebuild the bench, or fix the eval manifest")
    if _is_eval_manifest(data):
        return _read_eval_manifest(path)
    return built_bench_suite(path.parent)


def built_bench_suite(directory: Path) -> list[EvalTask]:
    """The eval sets of a built bench. Held-out instances draw their demonstrations from the
    task's other (training) instances; held-out tasks and categories from the task's instances
    (the prompt renderer never uses the query itself)."""
    from optiml_engine.data.bench_store import BuiltBench
    from optiml_engine.data.consolidate import dataset_key

    suite = []
    bench = BuiltBench(directory)
    # benches built before the key listed options for every task
    listed = bench.manifest.get("superni_options_list", True)
    aliases = bench.manifest.get("dataset_aliases") or {}
    for level, pairs in bench.eval_sets().items():
        for task, instances in pairs:
            task.meta["trained_options_list"] = listed
            task.meta["dataset_key"] = dataset_key(task, aliases)  # as the bench's dedup names it
            pool = None
            if level == "heldout_instance":
                held = set(task.meta.get("eval_ids", ()))
                pool = [i for i in task.instances if i.id not in held]
            suite.append(EvalTask(task, level, list(instances), pool))
    return suite


def _is_eval_manifest(data) -> bool:
    """A built bench's manifest says its format version; anything else is read (and checked)
    as an eval manifest."""
    return not (isinstance(data, dict) and "format_version" in data)


# The added benchmarks' levels (§2.3, Table 15: MMLU is partially supervised; BBH and RAFT have
# no category in training).
ADDED_LEVELS = {"mmlu": "heldout_task", "bbh": "heldout_category", "raft": "heldout_category"}


def added_suite(spec: str) -> list[EvalTask]:
    """The tasks of `FORMAT=PATH[@LEVEL]`: each scored on its reader's evaluation split, its
    demonstrations drawn from the reader's demonstration split."""
    from optiml_engine.data.sources import load_tasks

    fmt, eq, rest = spec.partition("=")
    path, _, level = rest.partition("@")
    fix = f"write FORMAT=PATH[@LEVEL], FORMAT one of {', '.join(ADDED_LEVELS)}"
    if not eq or fmt not in ADDED_LEVELS or not path:
        raise OptimlError(f"--suite {spec}", "not an added benchmark", fix)
    level = level or ADDED_LEVELS[fmt]
    if level not in LEVELS:
        raise OptimlError(f"--suite {spec}", f"{level!r} is not a level",
                          f"use one of {', '.join(LEVELS)}")
    suite = []
    for task in load_tasks(path, fmt):
        evals = _by_ids(task.instances, task.meta["eval_ids"], f"--suite {spec}")
        pool = _by_ids(task.instances, task.meta["demo_ids"], f"--suite {spec}")
        suite.append(EvalTask(task, level, evals, pool))
    return suite


def task_kind(et: EvalTask, protocol: EvalProtocol = PAPER) -> str:
    """"rank" (rank classification over answer options) or "generate" (greedy decoding)."""
    return "rank" if protocol.ranks(et.task) else "generate"


def _round_robin(groups: list[list]) -> list:
    """The first item of each group, then the second of each, ... (groups keep their order)."""
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]


def stratified_order(tasks: list[EvalTask], protocol: EvalProtocol = PAPER) -> list[EvalTask]:
    """`tasks` in the order the in-training subset takes them: rank-classification and generation
    tasks alternate (rank first); within each kind the categories take turns (in name order), and
    within a category the tasks come in name order. Deterministic: names alone decide."""
    by_kind: dict[str, dict[str, list[EvalTask]]] = {}
    for et in sorted(tasks, key=lambda et: et.name):
        by_kind.setdefault(task_kind(et, protocol), {}).setdefault(et.task.category, []).append(et)
    kinds = [by_kind[k] for k in ("rank", "generate") if k in by_kind]
    return _round_robin([_round_robin([cats[c] for c in sorted(cats)]) for cats in kinds])


def subset(suite: list[EvalTask], tasks_per_level: int, instances_per_task: int,
           protocol: EvalProtocol = PAPER) -> list[EvalTask]:
    """A fixed, small, stratified slice for in-training evaluation: per level, the first
    `tasks_per_level` tasks of `stratified_order` (both kinds of scoring, several categories),
    each with its first `instances_per_task` instances. Its scores are not those of the full
    evaluation: the trainer logs them under eval/subset/..."""
    picked = []
    for level in sorted({et.level for et in suite}):
        tasks = stratified_order([et for et in suite if et.level == level], protocol)
        for et in tasks[:tasks_per_level]:
            picked.append(EvalTask(et.task, et.level, et.instances[:instances_per_task],
                                   et.demo_pool))
    return picked
