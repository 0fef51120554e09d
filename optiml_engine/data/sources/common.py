"""Helpers every task source shares: tolerant JSON/JSONL reading, errors naming the record."""

from __future__ import annotations

import math
import re
from pathlib import Path

from ...errors import OptimlError, parse_json, read_text


def read_json(path: Path) -> object:
    """Parse a JSON file. Python's parser accepts the bare `NaN` some Super-NI files hold."""
    return parse_json(read_text(path), str(path),
                      "fix the file or remove it from the bench config")


def read_jsonl(path: Path, fix: str = "one JSON object per line") -> list[tuple[int, dict]]:
    """(line number, record) pairs of a JSONL file; blank lines are skipped, anything else
    that is not a JSON object is an error naming the line."""
    records = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        record = parse_json(line, str(path), fix, line=lineno)
        if not isinstance(record, dict):
            raise OptimlError(f"{path}:{lineno}", "record is not a JSON object", fix)
        records.append((lineno, record))
    return records


def is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def string_list(value: object) -> tuple[list[str], int]:
    """A list of strings from a field that may be a string, a list, or hold bare NaNs
    (a Super-NI quirk). Returns the strings and how many NaNs were dropped."""
    if value is None or is_nan(value):
        return [], int(is_nan(value))
    items = value if isinstance(value, list) else [value]
    kept = [str(v) for v in items if not is_nan(v) and v is not None]
    return kept, sum(is_nan(v) for v in items)


def require_str(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        what = "is missing" if key not in record else f"is {type(value).__name__}, not a string"
        raise OptimlError(where, f"field '{key}' {what}", f"give '{key}' as a string")
    return value


def expand(path: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """A file, or every file under a directory with one of the suffixes, sorted for determinism."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    raise OptimlError(str(path), "no such file or directory", "check the source path in the config")


_SPLIT_NAME = re.compile(r"^(train|training|validation|valid|val|dev|test)(?![a-z])", re.I)
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation",
               "valid": "validation", "val": "validation", "dev": "validation", "test": "test"}


def split_of(name: str | Path) -> str | None:
    """The original split a record file holds, from its name (`train.jsonl`, `validation.jsonl`,
    `test-00000-of-00001.jsonl`, `dev.jsonl`): train / validation / test, or None."""
    m = _SPLIT_NAME.match(Path(name).name)
    return SPLIT_NAMES[m.group(1).lower()] if m else None
