"""The summary `optiml data build` prints, in the shape of the paper's Table 1: per benchmark its
categories, tasks, instances and prompts per task, how its tasks split into training and
evaluation (dev / test, by level), and the tasks the bench rules removed; then the reasons.
Everything is read from the manifest and report.json, so it describes exactly what was built."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

LEVELS = {"heldout_category": "level 1", "heldout_task": "level 2"}
RULES = ("duplicate", "excluded", "leakage")  # report.json reasons that remove a task
# dev / test: held-out tasks (levels 1 and 2); L3 inst.: held-out instances of training tasks
# tokens: mean and std of a training example's source + target tokens (Table 1's prompt length,
# here after the bench's tokenizer and truncation)
HEADER = ("benchmark", "categories", "tasks", "instances", "prompts/task", "train", "train ex.",
          "tokens mean", "std", "dev L1-2", "test L1-2", "L3 inst.", "removed dup/excl/leak")


def _table(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(r, widths, strict=True)))
    return [fmt(r) for r in rows]


def _lengths(tasks: list[dict], row_lengths: np.ndarray | None) -> tuple[str, str]:
    if row_lengths is None:
        return "-", "-"
    parts = [row_lengths[t["train_row_offset"]:t["train_row_offset"] + t["n_train"]]
             for t in tasks]
    lengths = np.concatenate(parts) if parts else np.zeros(0)
    if not lengths.size:
        return "-", "-"
    return f"{lengths.mean():.0f}", f"{lengths.std():.0f}"


def _row(name: str, tasks: list[dict], removed: Counter, row_lengths: np.ndarray | None
         ) -> tuple:
    train = [t for t in tasks if t["split"] == "train"]
    held = [t for t in tasks if t["split"] != "train"]
    roles = Counter(t.get("eval_role") or "test" for t in held)
    prompts = sum(t.get("prompts", 1) for t in tasks) / max(len(tasks), 1)
    level3 = sum(t["n_eval"] for t in train)
    return (name, len({t["category"] for t in tasks}), len(tasks),
            sum(t["n_instances"] for t in tasks), f"{prompts:.1f}", len(train),
            sum(t["n_train"] for t in train), *_lengths(train, row_lengths), roles["dev"],
            roles["test"], level3,
            "/".join(str(removed[r]) for r in RULES))


def table_one(manifest: dict, report: dict, row_lengths: np.ndarray | None = None) -> str:
    """The summary; `row_lengths`: tokens of every training row (the bench index's source +
    target lengths), for the length columns."""
    by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for t in manifest["tasks"]:
        by_benchmark[t["benchmark"]].append(t)
    removed: dict[str, Counter] = defaultdict(Counter)
    reasons: dict[str, list[str]] = defaultdict(list)
    for s in report.get("skipped", []):
        rule = next((r for r in RULES if s["reason"].startswith(r)), None)
        if rule:
            removed[s.get("benchmark") or "?"][rule] += 1
            reasons[rule].append(f"{s['where']}: {s['reason']}")
    names = sorted(set(by_benchmark) | set(removed))
    rows = [HEADER] + [_row(b, by_benchmark.get(b, []), removed[b], row_lengths)
                       for b in names]
    rows.append(_row("total", manifest["tasks"], sum(removed.values(), Counter()), row_lengths))
    lines = ["OPT-IML Bench as built (cf. the paper's Table 1):", *_table(rows), ""]
    # the evaluation side by level and role (§2.3): tasks, categories, instances
    split_rows = [("split", "tasks", "categories", "instances")]
    level3 = [t for t in manifest["tasks"] if t["split"] == "train" and t["n_eval"]]
    groups = [("train", [t for t in manifest["tasks"] if t["split"] == "train"], "n_train")]
    for role in ("dev", "test"):
        for split, level in LEVELS.items():
            groups.append((f"{role} {level}", [t for t in manifest["tasks"] if t["split"] == split
                                               and (t.get("eval_role") or "test") == role],
                           "n_eval"))
        groups.append((f"{role} level 3", [t for t in level3 if t.get("eval_role") == role],
                       "n_eval"))
    for label, tasks, field in groups:
        split_rows.append((label, len(tasks), len({t["category"] for t in tasks}),
                           sum(t[field] for t in tasks)))
    lines += _table(split_rows)
    for rule in RULES:
        if reasons[rule]:
            shown = reasons[rule][:5]
            more = len(reasons[rule]) - len(shown)
            lines.append(f"removed ({rule}, {len(reasons[rule])}): " + "; ".join(shown)
                         + (f"; and {more} more (report.json)" if more else ""))
    return "\n".join(lines)
