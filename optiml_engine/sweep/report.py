"""The sweep's comparison: OUT/results.json, OUT/report.md and PNG charts, in the paper's shape.

- Table-4-like: one row per variant, per level and shots `mean ± std` over seeds; then one table
  per level with its categories (Figure 2's breakdown).
- The model-selection score (§4.1, sweep/scores.py) per level and overall, the best variant per
  level, and deltas against the baseline: the mean of the per-seed differences (variant minus
  baseline, same seed) and their standard deviation (the spread over seeds).
- Cost per run: wall time, target tokens, target tokens/s.

std is the sample standard deviation (n - 1) over seeds; with one seed it is "-". Everything is
a function of the runs' DONE.json files, written in a fixed order, so the same results give the
same bytes apart from the timings (the cost table's seconds and tokens/s).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from statistics import fmean, stdev

from optiml_engine.sweep.plan import DONE, plan_runs

LEVEL_ORDER = ("heldout_category", "heldout_task", "heldout_instance")
LEVEL_TITLES = {"heldout_category": "held-out categories",
                "heldout_task": "held-out tasks", "heldout_instance": "held-out instances"}
SHORT = {"heldout_category": "cat", "heldout_task": "task", "heldout_instance": "inst"}


def mean_std(values: list[float]) -> dict:
    return {"mean": fmean(values), "std": stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def _levels(names) -> list[str]:
    names = set(names)
    return [lv for lv in LEVEL_ORDER if lv in names] + sorted(set(names) - set(LEVEL_ORDER))


def short_scores(scores: dict) -> str:
    """One run's selection scores in one line: `cat 12.3 | task 4.5 | inst 60.1 | all 25.6`."""
    sel = scores["selection"]
    parts = [f"{SHORT.get(lv, lv)} {sel[lv]:.1f}"
             for lv in _levels([k for k in sel if k != "overall"])]
    return " | ".join([*parts, f"selection {sel['overall']:.1f}"]) if sel else "no scores"


def collect(spec, out: Path) -> dict:
    """results.json's content: the plan and every finished run, in plan order."""
    runs = []
    for run in plan_runs(spec):
        path = run.dir(out) / DONE
        if path.is_file():
            runs.append(json.loads(path.read_text()))
    return {"sweep": spec.name, "baseline": spec.baseline, "swept": spec.swept,
            "seeds": spec.seeds, "variants": [v.name for v in spec.variants], "runs": runs}


def aggregate(results: dict) -> dict:
    """Per variant, over its seeds: level and category scores per shots, selection scores and
    deltas against the baseline (per-seed differences)."""
    by_variant: dict = {}
    for r in results["runs"]:
        by_variant.setdefault(r["variant"], []).append(r)
    base = {r["seed"]: r["scores"] for r in by_variant.get(results["baseline"], [])}
    out = {}
    for name in results["variants"]:
        runs = by_variant.get(name)
        if not runs:
            continue
        scores = [r["scores"] for r in runs]
        levels = _levels({lv for s in scores for lv in s["level"]})
        agg = {"seeds": [r["seed"] for r in runs], "value": runs[0].get("value"),
               "level": {}, "category": {}, "selection": {}, "delta": {}}
        for lv in levels:
            shots = sorted({k for s in scores for k in s["level"].get(lv, {})}, key=int)
            agg["level"][lv] = {k: mean_std([s["level"][lv][k] for s in scores
                                             if k in s["level"].get(lv, {})]) for k in shots}
            cats = sorted({c for s in scores for c in s["category"].get(lv, {})})
            agg["category"][lv] = {
                c: {k: mean_std([s["category"][lv][c][k] for s in scores
                                 if k in s["category"].get(lv, {}).get(c, {})])
                    for k in sorted({k for s in scores
                                     for k in s["category"].get(lv, {}).get(c, {})}, key=int)}
                for c in cats}
        for key in [*levels, "overall"]:
            values = [s["selection"][key] for s in scores if key in s["selection"]]
            if values:
                agg["selection"][key] = mean_std(values)
            diffs = [r["scores"]["selection"][key] - base[r["seed"]]["selection"][key]
                     for r in runs if r["seed"] in base and key in r["scores"]["selection"]
                     and key in base[r["seed"]]["selection"]]
            if diffs:
                agg["delta"][key] = mean_std(diffs)
        out[name] = agg
    return out


def best_per_level(agg: dict) -> dict:
    """The variants with the highest mean selection score of each level (several on a tie,
    which a tiny model's identical predictions give)."""
    best = {}
    keys = _levels({k for a in agg.values() for k in a["selection"] if k != "overall"})
    for key in [*keys, "overall"]:
        means = {name: a["selection"][key]["mean"] for name, a in agg.items()
                 if key in a["selection"]}
        if means:
            top = max(means.values())
            best[key] = [name for name, mean in means.items() if mean == top]
    return best


def _pm(cell: dict | None, signed: bool = False) -> str:
    if not cell:
        return "-"
    mean = f"{cell['mean']:+.1f}" if signed else f"{cell['mean']:.1f}"
    return mean if cell["std"] is None else f"{mean} ± {cell['std']:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def render(results: dict, agg: dict, charts: list[str] = ()) -> str:
    levels = _levels({lv for a in agg.values() for lv in a["level"]})
    shots = sorted({k for a in agg.values() for lv in a["level"].values() for k in lv}, key=int)
    base = results["baseline"]
    parts = [f"# Sweep {results['sweep']}", "",
             f"- runs finished: {len(results['runs'])} of "
             f"{len(results['variants']) * len(results['seeds'])} "
             f"({len(results['variants'])} variants x seeds {results['seeds']})",
             f"- baseline: {base}" + (f"; swept: {results['swept']}" if results["swept"] else ""),
             "- cells: mean ± sample std over seeds (0-100; accuracy for rank classification, "
             "ROUGE-L or exact match for generation); a level is the mean of its task means", ""]
    if not agg:
        return "\n".join(parts + ["No run has finished yet.", ""])
    parts += ["## Levels (Table 4's shape)", ""]
    header = ["variant", *(f"{LEVEL_TITLES.get(lv, lv)} {k}-shot" for lv in levels
                           for k in shots)]
    rows = [[name + (" (baseline)" if name == base else ""),
             *(_pm(a["level"].get(lv, {}).get(k)) for lv in levels for k in shots)]
            for name, a in agg.items()]
    parts += [_table(header, rows), ""]

    sel_keys = [*levels, "overall"]
    parts += ["## Model-selection score (§4.1)", "",
              "Per level: the mean over shots of the mean over categories of task means "
              "(Summarization 0-shot only); overall: the mean of the levels. Δ: the mean of the "
              "per-seed differences to the baseline ± their sample std.", ""]
    header = ["variant", *(LEVEL_TITLES.get(k, k) for k in sel_keys),
              *(f"Δ {LEVEL_TITLES.get(k, k)}" for k in sel_keys)]
    rows = [[name, *(_pm(a["selection"].get(k)) for k in sel_keys),
             *(_pm(a["delta"].get(k), signed=True) if name != base else "·" for k in sel_keys)]
            for name, a in agg.items()]
    parts += [_table(header, rows), ""]
    best = best_per_level(agg)
    parts += ["Best variant per level: " + "; ".join(
        f"{LEVEL_TITLES.get(k, k)}: " + (f"**{best[k][0]}**" if len(best[k]) == 1 else
                                         f"tie of {', '.join(best[k])}")
        for k in sel_keys if k in best), ""]
    for chart in charts:
        parts += [f"![{Path(chart).stem}]({Path(chart).name})", ""]

    for lv in levels:
        cats = sorted({c for a in agg.values() for c in a["category"].get(lv, {})})
        parts += [f"## Categories of {LEVEL_TITLES.get(lv, lv)} "
                  f"({'/'.join(shots)}-shot)", ""]
        rows = [[name, *(" / ".join(_pm(a["category"].get(lv, {}).get(c, {}).get(k))
                                    for k in shots) for c in cats)] for name, a in agg.items()]
        parts += [_table(["variant", *cats], rows), ""]

    parts += ["## Cost per run", ""]
    rows = [[r["run"], f"{r['cost']['seconds']:.1f} s", str(r["cost"]["target_tokens"]),
             f"{r['cost']['target_tokens_per_s']:.0f} tok/s", str(r["cost"]["steps"]),
             "-" if r["cost"].get("final_loss") is None else f"{r['cost']['final_loss']:.4f}"]
            for r in results["runs"]]
    parts += [_table(["run", "train wall time", "target tokens", "target tokens/s", "steps",
                      "last step's loss"], rows), ""]
    return "\n".join(parts)


def write_report(spec, out: Path) -> Path:
    from optiml_engine.sweep.charts import swept_lines

    out = Path(out)
    results = collect(spec, out)
    agg = aggregate(results)
    charts = []
    if results["swept"] and agg and all(a["value"] is not None for a in agg.values()):
        charts = [swept_lines(agg, results["swept"], out / "levels_vs_swept.png")]
    payload = {**results, "aggregate": agg, "best": best_per_level(agg)}
    _replace(out / "results.json", json.dumps(payload, indent=1, sort_keys=True) + "\n")
    _replace(out / "report.md", render(results, agg, [str(c) for c in charts]))
    return out / "report.md"


def _replace(path: Path, text: str) -> None:
    """Written whole or not at all (array tasks may report at the same time)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
