"""RAFT (Alex et al., 2021) in its release layout: one directory per task holding `train.csv`
and `test.csv` with a header row, a `Label` column, an `ID` column and the task's text columns.

Scored by rank classification over the task's label names (§6.1). Labels are the `Label` values
as written; where they are numbers (the release's class indices, 0 = unlabelled), the task's
`labels.txt` gives the names, one per line, line 1 for label 1. An instance shows each text
column as `Column: value`. Demonstrations come from `train.csv`. Rows of `test.csv` with a label
are scored; the public test labels are hidden, so where `test.csv` has none the train rows are
scored, each with demonstrations drawn from the other train rows (`meta["eval_split"]` says
which, and evaluation never shows an instance as its own demonstration).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ...errors import OptimlError, read_text
from ..task import Instance, Task

UNLABELLED = ("", "0", "Unlabeled", "unlabeled")
FIX = "a header row with a Label column, one row per example"


def _read_csv(path: Path) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(read_text(path, FIX)))
    if not reader.fieldnames or "Label" not in reader.fieldnames:
        raise OptimlError(f"{path}:1", "no Label column in the header", FIX)
    rows = list(reader)
    for n, row in enumerate(rows, 2):
        if None in row or any(v is None for v in row.values()):
            raise OptimlError(f"{path}:{n}", "not as many fields as the header", FIX)
    return rows


def _label_names(task_dir: Path, values: set[str]) -> dict[str, str]:
    """{Label value: label name}."""
    if not all(v.isdigit() for v in values):
        return {v: v for v in values}
    names_file = task_dir / "labels.txt"
    if not names_file.is_file():
        raise OptimlError(str(task_dir / "train.csv"), "the Label values are class numbers",
                          f"write their names in {names_file}, one per line, label 1 first")
    names = [line.strip() for line in read_text(names_file).splitlines() if line.strip()]
    mapping = {}
    for v in values:
        if not 1 <= int(v) <= len(names):
            raise OptimlError(str(names_file), f"no name for label {v} ({len(names)} names)",
                              "one name per line, label 1 first")
        mapping[v] = names[int(v) - 1]
    return mapping


def _instance(row: dict[str, str], inst_id: str, label: str | None, options: list[str]):
    text = "\n".join(f"{k}: {v}" for k, v in row.items() if k not in ("Label", "ID"))
    return Instance(id=inst_id, input=text, outputs=[label] if label else [""], options=options)


def load_raft(path: str | Path) -> list[Task]:
    root = Path(path)
    dirs = sorted(p.parent for p in root.rglob("train.csv")) if root.is_dir() else []
    if not dirs:
        raise OptimlError(str(root), "no <task>/train.csv files", "point at RAFT's data/")
    tasks = []
    for task_dir in dirs:
        name = f"raft_{task_dir.name}"
        train = _read_csv(task_dir / "train.csv")
        test = _read_csv(task_dir / "test.csv") if (task_dir / "test.csv").is_file() else []
        labelled = [r for r in test if r["Label"].strip() not in UNLABELLED]
        values = {r["Label"].strip() for r in train + labelled}
        if not values or not train:
            raise OptimlError(str(task_dir / "train.csv"), "no labelled rows", FIX)
        names = _label_names(task_dir, values)
        options = sorted(set(names.values()))
        train_insts = [_instance(r, f"{name}-train-{i}", names[r["Label"].strip()], options)
                       for i, r in enumerate(train)]
        test_insts = [_instance(r, f"{name}-test-{i}", names[r["Label"].strip()], options)
                      for i, r in enumerate(labelled)]
        scored = test_insts or train_insts
        tasks.append(Task(
            name=name, benchmark="raft", category="RAFT", definition="",
            instances=train_insts + test_insts, metric="accuracy", dataset=name,
            source=str(task_dir),
            meta={"eval_ids": [i.id for i in scored], "demo_ids": [i.id for i in train_insts],
                  "eval_split": "test" if test_insts else "train (leave-one-out)"}))
    return tasks
