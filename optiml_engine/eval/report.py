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

from optiml_engine.eval.aggregate import aggregate, mean, selection_scores
from optiml_engine.eval.protocol import PAPER, EvalProtocol

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


def _shot_cells(summary: dict, kind: str, name: str, metric: str) -> list[str]:
    return [_cell(summary[s][kind].get(name, {}).get(metric)) for s in summary]


def paper_table(summary: dict, metric: str = "score") -> str:
    """The paper's table shape (§4.1, Tables 4-9): rows are benchmarks within each level (with
    their task counts) and the level itself; columns are the shots, then the 0/5-shot average
    that selects models (every category's 0- and 5-shot scores, §4.1)."""
    shots = list(summary)
    rows = []
    selection = selection_scores(summary, metric=metric)
    for lv in ordered_levels({lv for s in shots for lv in summary[s]["level"]}):
        names = sorted({k for s in shots for k in summary[s]["benchmark_level"]
                        if k.endswith(f" | {lv}")})  # "benchmark | level"
        for key in names:
            tasks = max(summary[s]["count"].get(key, 0) for s in shots)
            values = [summary[s]["benchmark_level"].get(key, {}).get(metric) for s in (0, 5)
                      if s in summary]
            both = [v for v in values if v is not None]
            rows.append([LEVEL_TITLES.get(lv, lv), key.split(" | ")[0], str(tasks),
                         *_shot_cells(summary, "benchmark_level", key, metric),
                         _cell(mean(both) if both else None)])
        tasks = max(summary[s]["count"].get(f"all | {lv}", 0) for s in shots)
        rows.append([LEVEL_TITLES.get(lv, lv), "**all**", str(tasks),
                     *_shot_cells(summary, "level", lv, metric), _cell(selection.get(lv))])
    header = ["level", "benchmark", "tasks", *(f"{s}-shot" for s in shots), "0/5-shot avg"]
    return _markdown_table(header, rows)


def level_category_table(summary: dict, metric: str = "score") -> str:
    """Rows: the categories of each level (the paper's per-category columns); columns: shots."""
    shots = list(summary)
    found = {k for s in shots for k in summary[s]["level_category"]}
    order = {lv: i for i, lv in enumerate(ordered_levels({k.split(" | ")[0] for k in found}))}
    rows = []
    for key in sorted(found, key=lambda k: (order[k.split(" | ")[0]], k)):
        lv, category = key.split(" | ", 1)
        rows.append([LEVEL_TITLES.get(lv, lv), category,
                     *_shot_cells(summary, "level_category", key, metric)])
    return _markdown_table(["level", "category", *(f"{s}-shot" for s in shots)], rows)


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
              "with options and ROUGE-L (greedy decoding) otherwise (exact match where a task "
              "says so; every Super-NI task by ROUGE-L under the paper's protocol); all on "
              "0-100. A level is the mean of its categories, a category of its tasks, a task "
              "of its templates and subtasks (the paper's protocol, docs/paper-fidelity.md); a "
              "category evaluated 0-shot only (Summarization) has no 5-shot cell.", "",
              "## Benchmarks x levels", "", paper_table(summary), "",
              "## Categories per level", "", level_category_table(summary), "",
              "## Levels", "", group_table(summary, "level"), "",
              "## All metrics per level", "", metric_table(summary), ""]
    for chart in charts:
        parts += [f"![{Path(chart).stem}]({Path(chart).name})", ""]
    parts += ["## Benchmarks", "", group_table(summary, "benchmark"), "",
              "## Categories", "", group_table(summary, "category"), "",
              "## Tasks", "", group_table(summary, "task"), ""]
    return "\n".join(parts)


def write_results(out_dir: str | Path, records: list[dict], meta: dict,
                  protocol: EvalProtocol = PAPER) -> dict:
    """Write results.json and return the summary it holds."""
    summary = aggregate(records, protocol)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "summary": summary, "instances": records}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    tmp.replace(out / "results.json")
    return summary


def write_report(out_dir: str | Path, records: list[dict], meta: dict,
                 history: list[dict] | None = None, protocol: EvalProtocol = PAPER) -> dict:
    """results.json, the charts and report.md in `out_dir`; returns the summary."""
    from optiml_engine.eval import charts

    out = Path(out_dir)
    summary = write_results(out, records, meta, protocol)
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
