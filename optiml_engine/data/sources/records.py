"""Dataset rows as users have them on disk, for the template sources (PromptSource):

- JSONL files (`train.jsonl`, `validation.jsonl`, ...), one record per line;
- parquet files (`train-00000-of-00001.parquet`, as the Hugging Face hub exports them);
- directories written by Hugging Face `datasets`' `save_to_disk`: a `DatasetDict` (a
  `dataset_dict.json` and one directory per split) or a single `Dataset` (`state.json` and its
  arrow files), in the templates' directory or in a sub-directory of it named after the split.

The last two are read with the `datasets` library (`pip install optiml-engine[bench]`).
Each row comes with a `where` string `<file or split directory>:<row>` whose file or directory
name tells its original split (`split_of`), for the level-3 holdout.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ...errors import OptimlError
from .common import read_jsonl

INSTALL = "pip install 'optiml-engine[bench]' (the `datasets` library reads parquet and " \
          "save_to_disk directories), or export the rows to JSONL"


def _datasets(where: Path):
    try:
        import datasets
    except ImportError as err:
        raise OptimlError(str(where), "needs the `datasets` library, which is not installed",
                          INSTALL) from err
    return datasets


def _is_saved_dataset(directory: Path) -> bool:
    return (directory / "dataset_dict.json").is_file() or (directory / "state.json").is_file()


def _rows_of(dataset, where: str) -> list[tuple[str, dict]]:
    return [(f"{where}:{i}", dict(row)) for i, row in enumerate(dataset)]


def _saved_rows(directory: Path) -> list[tuple[str, dict]]:
    datasets = _datasets(directory)
    try:
        loaded = datasets.load_from_disk(str(directory), keep_in_memory=True)
    except Exception as err:  # the library raises many kinds on a damaged directory
        raise OptimlError(str(directory), f"cannot be read by datasets.load_from_disk: {err}",
                          "write it again with save_to_disk, or export the rows to JSONL") from err
    if isinstance(loaded, datasets.DatasetDict):
        return [row for split in sorted(loaded) for row in
                _rows_of(loaded[split], str(directory / split))]
    return _rows_of(loaded, str(directory))


def _parquet_rows(file: Path) -> list[tuple[str, dict]]:
    datasets = _datasets(file)
    # the library converts parquet into an arrow cache first: keep that copy out of the user's
    # cache directory (a bench reads each file once) and remove it with the rows in memory
    with tempfile.TemporaryDirectory(prefix="optiml-parquet-") as cache:
        try:
            loaded = datasets.Dataset.from_parquet(str(file), cache_dir=cache,
                                                   keep_in_memory=True)
        except Exception as err:
            raise OptimlError(str(file), f"is not a readable parquet file: {err}",
                              "export the rows again, or as JSONL") from err
        return _rows_of(loaded, str(file))


def read_rows(directory: Path) -> list[tuple[str, dict]]:
    """Every row stored in `directory` (see the module doc), in a fixed order: a saved dataset
    in the directory itself, else its JSONL and parquet files and saved split directories,
    sorted by name. Empty when there is none."""
    if _is_saved_dataset(directory):
        return _saved_rows(directory)
    rows: list[tuple[str, dict]] = []
    for entry in sorted(directory.iterdir()):
        if entry.is_file() and entry.suffix == ".jsonl":
            rows += [(f"{entry}:{ln}", rec) for ln, rec in read_jsonl(entry)]
        elif entry.is_file() and entry.suffix == ".parquet":
            rows += _parquet_rows(entry)
        elif entry.is_dir() and _is_saved_dataset(entry):
            rows += _saved_rows(entry)
    return rows
