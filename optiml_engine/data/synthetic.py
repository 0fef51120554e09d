"""The embedded synthetic bench: 70 tasks in 14 categories, written as Super-NI task files.

Deterministic from a seed: the same seed gives byte-identical files. Each task's instances have
distinct inputs (so held-out instances never repeat a training input); a task whose input space is
too small for `instances_per_task` gets fewer instances rather than duplicates. `num_tasks` above 70
adds variants (`..._v2`, ...) of the catalogue tasks with fresh instances, for load benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from .sources.superni import parse_superni
from .synthetic_specs import SPECS, Spec
from .task import Task

FIRST_TASK_NUMBER = 5001  # clear of the real Super-NI numbering (task1..task1700)
ATTEMPTS_PER_INSTANCE = 20


def task_name(index: int, spec: Spec, variant: int) -> str:
    suffix = f"_v{variant + 1}" if variant else ""
    return f"task{FIRST_TASK_NUMBER + index}_synthetic_{spec.slug}{suffix}"


def _draw(spec: Spec, rng: random.Random, count: int, taken: set[str]) -> list[tuple]:
    drawn: list[tuple] = []
    attempts = 0
    while len(drawn) < count and attempts < ATTEMPTS_PER_INSTANCE * count:
        attempts += 1
        item = spec.generate(rng)
        if item[0] not in taken:
            taken.add(item[0])
            drawn.append(item)
    return drawn


def synthetic_task_dict(index: int, spec: Spec, variant: int, seed: int,
                        instances_per_task: int) -> dict:
    """One task as a Super-NI JSON object (official keys in upstream order, plus our extension
    keys `Answer Options` and `Metric`)."""
    name = task_name(index, spec, variant)
    rng = random.Random(f"{seed}:{name}")
    taken: set[str] = set()
    demos = _draw(spec, rng, 3, taken)
    rows = _draw(spec, rng, instances_per_task, taken)
    number = name.split("_")[0]

    def inst_id(i: int) -> str:
        return f"{number}-" + hashlib.md5(f"{seed}:{name}:{i}".encode()).hexdigest()

    instances = []
    for i, row in enumerate(rows):
        inst = {"id": inst_id(i), "input": row[0], "output": [row[1]]}
        if len(row) > 2:
            inst["options"] = list(row[2])
        instances.append(inst)
    bad_demo = demos[2]
    choices = list(bad_demo[2]) if len(bad_demo) > 2 else list(spec.options or [])
    wrong = next((c for c in choices if c != bad_demo[1]), bad_demo[1][::-1] + "?")
    obj = {
        "Contributors": ["optiml-engine synthetic generator"],
        "Source": ["synthetic"],
        "URL": [],
        "Categories": [spec.category],
        "Reasoning": [],
        "Definition": [spec.definition],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Instruction_language": ["English"],
        "Domains": ["Synthetic"],
        "Positive Examples": [
            {"input": d[0], "output": d[1], "explanation": f"The answer is \"{d[1]}\"."}
            for d in demos[:2]],
        "Negative Examples": [
            {"input": bad_demo[0], "output": wrong,
             "explanation": f"The answer should be \"{bad_demo[1]}\"."}],
        "Instances": instances,
        "Instance License": ["Apache 2.0"],
    }
    if spec.options:
        obj["Answer Options"] = list(spec.options)
    obj["Metric"] = "accuracy" if (spec.options or len(rows[0]) > 2) else spec.metric
    return obj


def _catalogue(num_tasks: int | None) -> list[tuple[int, Spec, int]]:
    count = len(SPECS) if num_tasks is None else num_tasks
    return [(i, SPECS[i % len(SPECS)], i // len(SPECS)) for i in range(count)]


def synthetic_tasks(seed: int = 0, instances_per_task: int = 200,
                    num_tasks: int | None = None) -> list[Task]:
    """The synthetic tasks as Task objects, exactly as reading the written files would give."""
    tasks = []
    for index, spec, variant in _catalogue(num_tasks):
        obj = synthetic_task_dict(index, spec, variant, seed, instances_per_task)
        name = task_name(index, spec, variant)
        tasks.append(parse_superni(obj, name, f"synthetic:{name}"))
    return tasks


def write_synthetic_superni(out_dir: str | Path, seed: int = 0, instances_per_task: int = 200,
                            num_tasks: int | None = None) -> list[Path]:
    """Write one Super-NI JSON file per task into `out_dir` (formatted as upstream: 4-space
    indent, UTF-8, no trailing newline). Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, spec, variant in _catalogue(num_tasks):
        obj = synthetic_task_dict(index, spec, variant, seed, instances_per_task)
        path = out / f"{task_name(index, spec, variant)}.json"
        path.write_text(json.dumps(obj, indent=4, ensure_ascii=False), encoding="utf-8")
        paths.append(path)
    return paths


def synthetic_src_tgt(seed: int = 0, examples: int = 2000) -> list[tuple[str, str]]:
    """`examples` 0-shot (source, target) pairs taken round-robin over every synthetic task (for
    recipes that train on the synthetic set without building a bench)."""
    from .prompts import render

    per_task = -(-examples // len(SPECS))
    tasks = synthetic_tasks(seed, per_task)
    pairs = []
    for i in range(examples):
        task = tasks[i % len(tasks)]
        instances = task.instances
        pairs.append(render(task, instances[(i // len(tasks)) % len(instances)], seed=seed))
    return pairs
