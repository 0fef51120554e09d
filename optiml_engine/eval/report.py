"""What an evaluation leaves behind: `results.json` (every prediction with its references and
scores), `report.md` (levels x shots, then per-benchmark, per-category and per-task rows) and PNG
charts.

An instance record is a dict: task, category, benchmark, level, shots, id, kind ("rank" or
"generate"), prediction, references, options (rank only) and scores {metric: 0-100}.
`scores["score"]` is the headline number: accuracy for rank classification, ROUGE-L for generation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from optiml_engine.eval.metrics import aggregate

# The three OPT-IML Bench generalization levels, in the order the paper lists them.
LEVEL_ORDER = ("heldout_category", "heldout_task", "heldout_instance")
LEVEL_TITLES = {
    "heldout_category": "1. held-out categories",
    "heldout_task": "2. held-out tasks of seen categories",
    "heldout_instance": "3. held-out instances of seen tasks",
}
METRICS = ("score", "accuracy", "exact_match", "rougeL")


def ordered_levels(names) -> list[str]:
    known = [lv for lv in LEVEL_ORDER if lv in names]
    return known + sorted(n for n in names if n not in LEVEL_ORDER)


def _cell(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def group_table(summary: dict, kind: str = "level", metric: str = "score",
                names: Sequence[str] | None = None, label: str | None = None) -> str:
    """Rows: the groups of `kind` (level, benchmark, category, task); columns: shots."""
    shots = list(summary)
    if names is None:
        found = {name for s in shots for name in summary[s][kind]}
        names = ordered_levels(found) if kind == "level" else sorted(found)
    rows = []
    for name in names:
        cells = [_cell(summary[s][kind].get(name, {}).get(metric)) for s in shots]
        rows.append([LEVEL_TITLES.get(name, name) if kind == "level" else name, *cells])
    header = [label or kind, *(f"{s}-shot {metric}" for s in shots)]
    return _markdown_table(header, rows)


def side_by_side(summaries: dict[str, dict], metric: str = "score") -> str:
    """Levels x (model, shots) for several models, e.g. {"untrained": ..., "trained": ...}."""
    levels = ordered_levels({lv for summ in summaries.values() for s in summ
                             for lv in summ[s]["level"]})
    header, columns = ["level"], []
    for model, summ in summaries.items():
        for s in summ:
            header.append(f"{model} {s}-shot")
            columns.append((summ, s))
    rows = [[LEVEL_TITLES.get(lv, lv),
             *(_cell(summ[s]["level"].get(lv, {}).get(metric)) for summ, s in columns)]
            for lv in levels]
    return _markdown_table(header, rows)


def metric_table(summary: dict) -> str:
    """Every metric for each level and shot count (blank where a level has no such task)."""
    rows = []
    for lv in ordered_levels({lv for s in summary for lv in summary[s]["level"]}):
        for s in summary:
            values = summary[s]["level"].get(lv, {})
            cells = [_cell(values.get(m)) for m in METRICS]
            rows.append([LEVEL_TITLES.get(lv, lv), str(s), *cells])
    return _markdown_table(["level", "shots", *METRICS], rows)


def render_markdown(summary: dict, meta: dict, charts: Sequence[str] = ()) -> str:
    parts = ["# Evaluation report", ""]
    for key in ("checkpoint", "bench", "shots", "instances", "seconds"):
        if key in meta:
            parts.append(f"- {key}: {meta[key]}")
    parts += ["", "`score` is accuracy (rank classification over the answer options) for tasks "
              "with options and ROUGE-L (greedy decoding) otherwise; all on 0-100.", "",
              "## Levels", "", group_table(summary, "level"), "",
              "## All metrics per level", "", metric_table(summary), ""]
    for chart in charts:
        parts += [f"![{Path(chart).stem}]({Path(chart).name})", ""]
    parts += ["## Benchmarks", "", group_table(summary, "benchmark"), "",
              "## Categories", "", group_table(summary, "category"), "",
              "## Tasks", "", group_table(summary, "task"), ""]
    return "\n".join(parts)


def write_results(out_dir: str | Path, records: list[dict], meta: dict) -> dict:
    """Write results.json and return the summary it holds."""
    summary = aggregate(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "summary": summary, "instances": records}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    tmp.replace(out / "results.json")
    return summary


def write_report(out_dir: str | Path, records: list[dict], meta: dict,
                 history: list[dict] | None = None) -> dict:
    """results.json, the charts and report.md in `out_dir`; returns the summary."""
    from optiml_engine.eval import charts

    out = Path(out_dir)
    summary = write_results(out, records, meta)
    made = [charts.level_bars(summary, out / "levels.png")]
    if history:
        made.append(charts.history_lines(history, out / "training_evals.png"))
    (out / "report.md").write_text(render_markdown(summary, meta, [str(p) for p in made]))
    return summary


def load_history(path: str | Path) -> list[dict]:
    """In-training evaluations, one JSON object per line: {"step": N, "<scalar name>": value}."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
