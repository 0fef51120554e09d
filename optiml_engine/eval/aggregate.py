"""Instance scores into task, category, benchmark and level scores, per number of shots.

The paper's model-selection recipe (§4.1), each step behind a key of `EvalProtocol`:
1. a task's score is the mean over its instances;
2. `group_tasks`: the template tasks of one FLAN / PromptSource dataset, and the subtasks of one
   task (records with the same `task_group`, e.g. MMLU's 57 subjects), are averaged into one
   task (a "unit");
3. `merge_benchmarks`: units of the same dataset, level and category in several benchmarks are
   averaged per benchmark, then over the benchmarks, into one task;
4. `category_score: task_means`: a category (within a level) is the mean of its tasks;
5. `level_score: category_means`: a level is the mean of its categories.
Benchmarks are the mean of their units (before the merge, which mixes benchmarks).

A record: task, category, benchmark, level, shots, scores {metric: value}, and optionally
dataset and task_group (written by the harness).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from optiml_engine.eval.protocol import PAPER, TEMPLATED, EvalProtocol

KINDS = ("task", "unit", "category", "level_category", "benchmark", "benchmark_level", "level")


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _means(score_lists: list[dict]) -> dict:
    """Metric-wise mean of several {metric: value} dicts (each metric over those that have it)."""
    metrics = dict.fromkeys(m for d in score_lists for m in d)
    return {m: mean(d[m] for d in score_lists if m in d) for m in metrics}


def _unit_name(info: dict, protocol: EvalProtocol) -> str:
    if protocol.group_tasks:
        if info.get("task_group"):
            return info["task_group"]
        if info["benchmark"] in TEMPLATED and info.get("dataset"):
            return f"{info['benchmark']}/{info['dataset']}"
    return info["task"]


def _one_shot_count(records: list[dict], protocol: EvalProtocol) -> dict:
    tasks: dict[str, list[dict]] = defaultdict(list)
    info: dict[str, dict] = {}
    for r in records:
        tasks[r["task"]].append(r["scores"])
        info[r["task"]] = r
    out: dict = {kind: {} for kind in KINDS}
    out["count"] = {}
    task_scores = {t: _means(s) for t, s in sorted(tasks.items())}
    out["task"] = task_scores

    units: dict[tuple, list[dict]] = defaultdict(list)  # (level, category, benchmark, unit)
    unit_dataset: dict[tuple, str] = {}
    for t, scores in task_scores.items():
        r = info[t]
        key = (r["level"], r["category"], r["benchmark"], _unit_name(r, protocol))
        units[key].append(scores)
        unit_dataset[key] = r.get("dataset") or key[3]
    unit_scores = {key: _means(v) for key, v in units.items()}

    # 3. the same dataset in several benchmarks: one task, the mean over its benchmarks
    final: dict[tuple, dict] = {}  # (level, category, name) -> scores
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for key, scores in unit_scores.items():
        level, category, benchmark, unit = key
        merge_on = unit_dataset[key] if protocol.merge_benchmarks else f"{benchmark}:{unit}"
        groups[(level, category, merge_on)][benchmark].append((unit, scores))
    for (level, category, merge_on), by_bench in groups.items():
        if len(by_bench) > 1:
            name = f"{merge_on} ({'+'.join(sorted(by_bench))})"
            final[(level, category, name)] = _means(
                [_means([s for _, s in pairs]) for pairs in by_bench.values()])
        else:
            for unit, scores in next(iter(by_bench.values())):
                final[(level, category, unit)] = scores
    out["unit"] = {name: scores for (_, _, name), scores in sorted(final.items())}

    # 4. categories: per level (the paper's tables) and across levels
    per_level_cat: dict[tuple, list[dict]] = defaultdict(list)
    per_cat: dict[str, list[dict]] = defaultdict(list)
    for (level, category, _), scores in final.items():
        per_level_cat[(level, category)].append(scores)
        per_cat[category].append(scores)
    if protocol.category_score == "instances":
        per_level_cat, per_cat = defaultdict(list), defaultdict(list)
        for r in records:
            per_level_cat[(r["level"], r["category"])].append(r["scores"])
            per_cat[r["category"]].append(r["scores"])
    out["level_category"] = {f"{lv} | {c}": _means(v) for (lv, c), v in
                             sorted(per_level_cat.items())}
    out["category"] = {c: _means(v) for c, v in sorted(per_cat.items())}

    # benchmarks: the mean of their units
    per_bench: dict[str, list[dict]] = defaultdict(list)
    per_bench_level: dict[str, list[dict]] = defaultdict(list)
    for (level, _, benchmark, _), scores in unit_scores.items():
        per_bench[benchmark].append(scores)
        per_bench_level[f"{benchmark} | {level}"].append(scores)
    out["benchmark"] = {b: _means(v) for b, v in sorted(per_bench.items())}
    out["benchmark_level"] = {k: _means(v) for k, v in sorted(per_bench_level.items())}
    out["count"] = {k: len(v) for k, v in sorted(per_bench_level.items())}
    for level, _, _ in final:  # a level's tasks after the merge across benchmarks
        out["count"][f"all | {level}"] = out["count"].get(f"all | {level}", 0) + 1

    # 5. levels
    per_level: dict[str, list[dict]] = defaultdict(list)
    if protocol.level_score == "category_means":
        for (level, _), _scores in per_level_cat.items():
            per_level[level].append(out["level_category"][f"{level} | {_}"])
    else:
        for (level, _, _), scores in final.items():
            per_level[level].append(scores)
    out["level"] = {lv: _means(v) for lv, v in sorted(per_level.items())}
    return out


def aggregate(records: Iterable[dict], protocol: EvalProtocol = PAPER) -> dict:
    """{shots: {kind: {name: {metric: value}}}} for kind in `KINDS`, plus "count":
    {"benchmark | level": tasks (units), "all | level": tasks after the merge}."""
    by_shots: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        by_shots[r["shots"]].append(r)
    return {s: _one_shot_count(by_shots[s], protocol) for s in sorted(by_shots)}


def selection_scores(summary: dict, level_key: str = "level_category",
                     shots: tuple[int, ...] = (0, 5), metric: str = "score") -> dict[str, float]:
    """§4.1's model-selection number per level: the mean of every (category, shots) score of
    the level over `shots` (a category evaluated 0-shot only counts once)."""
    values: dict[str, list[float]] = defaultdict(list)
    for s in shots:
        for name, scores in summary.get(s, {}).get(level_key, {}).items():
            if metric in scores:
                values[name.split(" | ")[0]].append(scores[metric])
    return {lv: mean(v) for lv, v in sorted(values.items())}
