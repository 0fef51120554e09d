"""MMLU (Hendrycks et al., 2021) in its official release layout: `<subject>_dev.csv`,
`<subject>_val.csv` and `<subject>_test.csv` (under `dev/`, `val/`, `test/` or anywhere below the
path), each row `question, A, B, C, D, answer` without a header, `answer` one of A-D.

One task per subject (57 in the release), all in the task group `mmlu`, so that evaluation
averages them into one MMLU score (§4.1: "all 57 subtasks of MMLU ... aggregated to get per task
performance"). Each instance shows the question and its four lettered choices; its options are
the four letters (rank classification over them, §6.1). `meta["eval_ids"]` are the test rows,
`meta["demo_ids"]` the dev rows (5-shot demonstrations come from the dev split only); val rows
are read and counted, neither scored nor shown.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ...errors import OptimlError, read_text
from ..task import Instance, Task
from .common import expand

LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "val", "test")
FIX = "each row: question, A, B, C, D, answer (A-D), no header, as in the official release"


def _split_of(path: Path) -> tuple[str, str] | None:
    stem = path.stem
    for split in SPLITS:
        if stem.endswith(f"_{split}"):
            return stem[: -len(split) - 1], split
    return None


def read_rows(path: Path) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(read_text(path, FIX))))
    for n, row in enumerate(rows, 1):
        if len(row) != 6:
            raise OptimlError(f"{path}:{n}", f"{len(row)} columns, not 6", FIX)
        if row[5].strip() not in LETTERS:
            raise OptimlError(f"{path}:{n}", f"answer {row[5]!r} is not one of A, B, C, D", FIX)
    return rows


def _instance(row: list[str], inst_id: str) -> Instance:
    choices = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, row[1:5],
                                                                     strict=True))
    return Instance(id=inst_id, input=f"{row[0]}\n{choices}", outputs=[row[5].strip()],
                    options=list(LETTERS))


def load_mmlu(path: str | Path) -> list[Task]:
    files: dict[str, dict[str, Path]] = {}
    for file in expand(path, (".csv",)):
        found = _split_of(file)
        if found:
            subject, split = found
            if split in files.setdefault(subject, {}):
                raise OptimlError(str(file), f"a second {split} file for subject {subject!r} "
                                  f"(the first: {files[subject][split]})", "keep one copy")
            files[subject][split] = file
    if not files:
        raise OptimlError(str(path), "no <subject>_{dev,val,test}.csv files",
                          "point at the MMLU release's data/ directory")
    tasks = []
    for subject, by_split in sorted(files.items()):
        for needed in ("dev", "test"):
            if needed not in by_split:
                raise OptimlError(str(path), f"subject {subject!r} has no {subject}_{needed}.csv",
                                  "5-shot MMLU needs each subject's dev and test files")
        instances, ids = [], {}
        for split in SPLITS:
            if split in by_split:
                rows = read_rows(by_split[split])
                ids[split] = [f"mmlu_{subject}-{split}-{i}" for i in range(len(rows))]
                instances += [_instance(r, i) for r, i in zip(rows, ids[split], strict=True)]
        meta = {"task_group": "mmlu", "subject": subject, "eval_ids": ids["test"],
                "demo_ids": ids["dev"], "split_counts": {s: len(v) for s, v in ids.items()}}
        tasks.append(Task(
            name=f"mmlu_{subject}", benchmark="mmlu", category="MMLU",
            definition=("The following are multiple choice questions (with answers) about "
                        f"{subject.replace('_', ' ')}."),
            instances=instances, metric="accuracy", dataset="mmlu",
            source=str(by_split["test"]), meta=meta))
    return tasks
