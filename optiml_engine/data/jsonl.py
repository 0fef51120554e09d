"""Reader for the metaseq fine-tuning format: one {"src": ..., "tgt": ...} object per line."""

from __future__ import annotations

import json
from pathlib import Path

from optiml_engine.errors import OptimlError


def read_src_tgt(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise OptimlError(str(path), "file not found", "check data.train_path")
    records = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise OptimlError(where, f"not valid JSON ({e.msg})",
                                  "write one JSON object per line") from None
            if not isinstance(record, dict):
                raise OptimlError(where, "not a JSON object", 'write {"src": ..., "tgt": ...}')
            for key in ("src", "tgt"):
                if not isinstance(record.get(key), str):
                    raise OptimlError(f"{where}: {key}", "missing or not a string",
                                      'write {"src": "...", "tgt": "..."}')
            records.append((record["src"], record["tgt"]))
    return records
