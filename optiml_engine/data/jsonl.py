"""Reader for the metaseq fine-tuning format: one {"src": ..., "tgt": ...} object per line."""

from __future__ import annotations

from pathlib import Path

from optiml_engine.data.sources.common import read_jsonl
from optiml_engine.errors import OptimlError


def read_src_tgt(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.exists():
        raise OptimlError(str(path), "file not found", "check data.train_path")
    records = []
    for line_no, record in read_jsonl(path, 'write one {"src": ..., "tgt": ...} object per line'):
        for key in ("src", "tgt"):
            if not isinstance(record.get(key), str):
                raise OptimlError(f"{path}:{line_no}: {key}", "missing or not a string",
                                  'write {"src": "...", "tgt": "..."}')
        records.append((record["src"], record["tgt"]))
    return records
