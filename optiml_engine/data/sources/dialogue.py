"""Dialogue JSONL: one conversation per record, `turns` a list of `{speaker, text}` objects (or of
plain strings, speakers then alternate `User`/`Assistant`). Every turn after the first becomes an
instance: the earlier turns as context, that turn as the target. Available for mixing; the paper's
final recipe uses no dialogue data, so bench configs leave it off by default.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import OptimlError
from ..task import Instance, Task
from .common import expand, read_jsonl

DEFAULT_SPEAKERS = ("User", "Assistant")


def _turns(record: dict, where: str) -> list[tuple[str, str]]:
    turns = record.get("turns")
    if not isinstance(turns, list) or len(turns) < 2:
        raise OptimlError(where, "'turns' must be a list of at least two turns")
    out = []
    for i, turn in enumerate(turns):
        if isinstance(turn, str):
            out.append((DEFAULT_SPEAKERS[i % 2], turn))
        elif isinstance(turn, dict) and isinstance(turn.get("text"), str):
            out.append((str(turn.get("speaker") or DEFAULT_SPEAKERS[i % 2]), turn["text"]))
        else:
            raise OptimlError(f"{where}: turns[{i}]", "a turn is a string or {speaker, text}")
    return out


def load_dialogue(path: str | Path, benchmark: str = "dialogue") -> list[Task]:
    tasks = []
    for file in expand(path, (".jsonl",)):
        instances = []
        for lineno, record in read_jsonl(file):
            turns = _turns(record, f"{file}:{lineno}")
            for k in range(1, len(turns)):
                context = "\n".join(f"{s}: {t}" for s, t in turns[:k])
                instances.append(Instance(id=f"{file.stem}-{lineno}-{k}",
                                          input=f"{context}\n{turns[k][0]}:",
                                          outputs=[turns[k][1]]))
        tasks.append(Task(name=f"{benchmark}_{file.stem}", benchmark=benchmark,
                          category="Dialogue Generation", definition="", instances=instances,
                          metric="rouge_l", dataset=file.stem, source=str(file)))
    return tasks
