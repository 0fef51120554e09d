"""One run's scores from its evaluation records, aggregated the paper's way (§4.1).

Per task: the mean over its instances, and where the same task name appears in several benchmarks
the mean of the per-benchmark means ("if the same task exists across multiple benchmarks, we then
average performance across benchmarks as well"). Per category (inside a level): the mean of its
task means. Per level and shots: the mean of its task means (as `optiml eval` reports a level).
The model-selection score of a level is the mean over shots of the mean over its categories
("a combined average of all 0 and 5-shot scores of each category"), Summarization at 0 shots only
(Table 5's caption); the overall selection score is the mean of the three levels' (§4.1: "average
performance across all three generalization levels on both 0-shot and 5-shot").
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean

ZERO_SHOT_ONLY = ("Summarization",)  # Table 5: "We use only 0-shot performance for Summarization"


def run_scores(records: list[dict]) -> dict:
    """{"level": {level: {shots: score}}, "category": {level: {category: {shots: score}}},
    "selection": {level: score, "overall": score}}; shots are strings (JSON keys)."""
    instances: dict = defaultdict(list)  # (level, category, task, shots, benchmark) -> scores
    for r in records:
        key = (r["level"], r["category"], r["task"], str(r["shots"]), r.get("benchmark", ""))
        instances[key].append(float(r["scores"]["score"]))
    per_benchmark: dict = defaultdict(list)
    for (level, category, task, shots, _), values in instances.items():
        per_benchmark[(level, category, task, shots)].append(fmean(values))
    tasks = {key: fmean(means) for key, means in per_benchmark.items()}

    by_level: dict = defaultdict(list)
    by_category: dict = defaultdict(list)
    for (level, category, _, shots), score in tasks.items():
        by_level[(level, shots)].append(score)
        by_category[(level, category, shots)].append(score)
    level_scores: dict = defaultdict(dict)
    for (level, shots), values in sorted(by_level.items()):
        level_scores[level][shots] = fmean(values)
    category_scores: dict = defaultdict(lambda: defaultdict(dict))
    for (level, category, shots), values in sorted(by_category.items()):
        category_scores[level][category][shots] = fmean(values)

    selection = {}
    for level, categories in category_scores.items():
        shots_means = []
        for shots in sorted({s for c in categories.values() for s in c}, key=int):
            cells = [c[shots] for name, c in categories.items() if shots in c
                     and not (name in ZERO_SHOT_ONLY and int(shots) > 0)]
            if cells:
                shots_means.append(fmean(cells))
        selection[level] = fmean(shots_means)
    if selection:
        selection["overall"] = fmean(selection.values())
    return {"level": {lv: dict(v) for lv, v in sorted(level_scores.items())},
            "category": {lv: {c: dict(s) for c, s in sorted(cats.items())}
                         for lv, cats in sorted(category_scores.items())},
            "selection": selection}
