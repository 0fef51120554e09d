"""Pre-training text JSONL (`{"text": ...}` per line) for the pre-training mix: each file is one
"task" whose instances have an empty source and the document as target, so every token is
trained on (OPT-IML mixes 5% of such data into the stream)."""

from __future__ import annotations

from pathlib import Path

from ..task import Instance, Task
from .common import expand, read_jsonl, require_str


def load_text(path: str | Path, benchmark: str = "pretraining") -> list[Task]:
    tasks = []
    for file in expand(path, (".jsonl",)):
        instances = [Instance(id=f"{file.stem}-{lineno}", input="",
                              outputs=[require_str(rec, "text", f"{file}:{lineno}")])
                     for lineno, rec in read_jsonl(file)]
        tasks.append(Task(name=f"{benchmark}_{file.stem}", benchmark=benchmark,
                          category="Pre-training Text", definition="", instances=instances,
                          metric="rouge_l", dataset=file.stem, source=str(file)))
    return tasks
