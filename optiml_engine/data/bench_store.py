"""The on-disk layout of a built bench, written by `bench.py` and read by training and evaluation.

```
manifest.json        tasks, categories, benchmarks, splits, counts, content hashes, tokenizer
report.json          everything skipped and why, dedup and cap drops, leakage pairs
tasks.jsonl          one task per line: definition, examples, all instances, split, eval ids
train/tokens_NNN.bin token ids of every training example (src then tgt), uint16 or uint32
train/index.npy      int64 rows [shard, offset, src_len, tgt_len, task]; a task's rows are
                     contiguous (manifest `train_row_offset`, `n_train`)
```
Training reads only the memory-mapped shards and the index, never the raw files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import OptimlError, parse_json, read_json
from .task import Example, Instance, Task

FORMAT_VERSION = 1
REBUILD = "rebuild the bench with `optiml data build BENCH.yaml --out DIR --force`"
SHARD_TOKENS = 1 << 28  # tokens per shard file


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise OptimlError(str(path), f"cannot read the file ({err.strerror or err})",
                          "make it readable or remove it") from None
    return h.hexdigest()


def task_record(task: Task, split: str, eval_ids: list[str]) -> dict:
    return {
        "name": task.name, "benchmark": task.benchmark, "category": task.category,
        "dataset": task.dataset, "metric": task.metric, "definition": task.definition,
        "split": split, "source": task.source,
        "positive_examples": [vars(e) for e in task.positive_examples],
        "negative_examples": [vars(e) for e in task.negative_examples],
        "instances": [i.to_dict() for i in task.instances], "eval_ids": eval_ids,
        # the prompt each instance was rendered with (merged PromptSource datasets), so an
        # evaluation can average over a dataset's prompts (§4.1)
        "instance_templates": task.meta.get("instance_templates") or {},
    }


def task_from_record(rec: dict) -> Task:
    return Task(name=rec["name"], benchmark=rec["benchmark"], category=rec["category"],
                definition=rec["definition"],
                instances=[Instance.from_dict(i) for i in rec["instances"]],
                positive_examples=[Example(**e) for e in rec["positive_examples"]],
                negative_examples=[Example(**e) for e in rec["negative_examples"]],
                metric=rec["metric"], dataset=rec["dataset"], source=rec["source"],
                meta={"split": rec["split"], "eval_ids": rec["eval_ids"],
                      "instance_templates": rec.get("instance_templates") or {}})


class ShardWriter:
    """Appends tokenised examples to fixed-size shard files and builds the index."""

    def __init__(self, directory: Path, vocab_size: int, shard_tokens: int = SHARD_TOKENS):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
        self.shard_tokens = shard_tokens
        self.rows: list[tuple[int, int, int, int, int]] = []
        self.shard, self.offset, self.file = -1, 0, None
        self.files: list[Path] = []

    def _next_shard(self) -> None:
        if self.file:
            self.file.close()
        self.shard += 1
        self.offset = 0
        path = self.dir / f"tokens_{self.shard:03d}.bin"
        self.files.append(path)
        self.file = path.open("wb")

    def add(self, task: int, src: list[int], tgt: list[int]) -> None:
        n = len(src) + len(tgt)
        if self.file is None or (self.offset + n > self.shard_tokens and self.offset > 0):
            self._next_shard()
        self.file.write(np.asarray(src + tgt, dtype=self.dtype).tobytes())
        self.rows.append((self.shard, self.offset, len(src), len(tgt), task))
        self.offset += n

    def close(self) -> dict:
        if self.file is None:
            self._next_shard()
        self.file.close()
        index = np.asarray(self.rows, dtype=np.int64).reshape(-1, 5)
        np.save(self.dir / "index.npy", index)
        return {"dtype": np.dtype(self.dtype).name,
                "shards": [{"file": f"train/{p.name}", "bytes": p.stat().st_size,
                            "sha256": sha256_file(p)} for p in self.files],
                "index": {"file": "train/index.npy", "rows": len(self.rows),
                          "sha256": sha256_file(self.dir / "index.npy")}}


class BuiltBench:
    """A built bench opened for reading: manifest, tasks, and memory-mapped training examples."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        manifest = self.dir / "manifest.json"
        if not manifest.is_file():
            raise OptimlError(str(self.dir), "not a built bench (no manifest.json)",
                              "run `optiml data build BENCH.yaml --out DIR` first; the demo's: "
                              "`optiml data build recipes/bench/synthetic.yaml "
                              "--out runs/bench-synthetic`")
        self.manifest = read_json(manifest, REBUILD)
        if not isinstance(self.manifest, dict):
            raise OptimlError(str(manifest), "not a bench manifest (not a JSON object)", REBUILD)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise OptimlError(str(manifest), "built by another version of the bench format",
                              "rebuild the bench")
        self._check_manifest(manifest)
        self.task_entries = self.manifest["tasks"]
        self.index = self._open_index()
        dtype = np.dtype(self.manifest["dtype"])
        self.shards = [self._open_shard(s, dtype) for s in self.manifest["shards"]]

    def _check_manifest(self, where: Path) -> None:
        m = self.manifest
        shapes = {"tasks": list, "shards": list, "dtype": str, "index": dict}
        for key, kind in shapes.items():
            if not isinstance(m.get(key), kind):
                raise OptimlError(f"{where}: {key}", f"missing or not a {kind.__name__}", REBUILD)
        if m["dtype"] not in ("uint16", "uint32"):
            raise OptimlError(f"{where}: dtype", f"{m['dtype']!r} is not uint16 or uint32",
                              REBUILD)
        for i, s in enumerate(m["shards"]):
            if not (isinstance(s, dict) and isinstance(s.get("file"), str)
                    and isinstance(s.get("bytes"), int)):
                raise OptimlError(f"{where}: shards[{i}]", "not a {file, bytes} entry", REBUILD)

    def _open_index(self) -> np.ndarray:
        path = self.dir / "train" / "index.npy"
        try:  # plain ndarray views of the maps: the np.memmap subclass costs ~10 us per indexing
            index = np.load(path, mmap_mode="r").view(np.ndarray)
        except (OSError, ValueError, EOFError) as err:
            raise OptimlError(str(path), f"cannot read the example index ({err})",
                              REBUILD) from None
        rows = self.manifest["index"].get("rows")
        if index.ndim != 2 or index.shape[1] != 5 or index.dtype != np.int64 or (
                rows is not None and len(index) != rows):
            raise OptimlError(str(path), f"holds {index.shape} {index.dtype}, the manifest says "
                              f"({rows}, 5) int64", REBUILD)
        return index

    def _open_shard(self, entry: dict, dtype) -> np.ndarray:
        path = self.dir / entry["file"]
        try:
            size = path.stat().st_size
        except OSError as err:
            raise OptimlError(str(path), f"cannot read the token shard ({err.strerror})",
                              REBUILD) from None
        if size != entry["bytes"]:
            raise OptimlError(str(path), f"{size} bytes, the manifest says {entry['bytes']} "
                              "(truncated or replaced)", REBUILD)
        if not size:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r").view(np.ndarray)

    def example(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        shard, offset, src_len, tgt_len, _ = self.index[row].tolist()
        tokens = self.shards[shard][offset:offset + src_len + tgt_len]
        return tokens[:src_len], tokens[src_len:]

    def tasks(self, splits: Iterable[str] | None = None) -> list[Task]:
        wanted = None if splits is None else set(splits)
        out = []
        path = self.dir / "tasks.jsonl"
        try:
            f = path.open(encoding="utf-8")
        except OSError as err:
            raise OptimlError(str(path), f"cannot read the task file ({err.strerror})",
                              REBUILD) from None
        lineno = 0
        try:
            with f:
                for lineno, line in enumerate(f, 1):
                    rec = parse_json(line.rstrip("\n"), str(path), REBUILD, line=lineno)
                    if not isinstance(rec, dict) or not isinstance(rec.get("split"), str):
                        raise OptimlError(f"{path}:{lineno}", "not a task record", REBUILD)
                    if wanted is None or rec["split"] in wanted:
                        out.append(task_from_record(rec))
        except UnicodeDecodeError:
            raise OptimlError(f"{path}:{lineno + 1}", "not UTF-8 text", REBUILD) from None
        except (KeyError, TypeError, AttributeError) as err:
            raise OptimlError(f"{path}:{lineno}", f"not a task record ({err!r})",
                              REBUILD) from None
        return out

    def eval_sets(self) -> dict[str, list[tuple[Task, list[Instance]]]]:
        """Per level, (task, eval instances): held-out categories, held-out tasks, held-out
        instances of training tasks, each capped at the bench's `max_eval_instances`."""
        cap = self.manifest.get("max_eval_instances")
        levels: dict[str, list[tuple[Task, list[Instance]]]] = {
            "heldout_category": [], "heldout_task": [], "heldout_instance": []}
        for task in self.tasks():
            ids = set(task.meta["eval_ids"])
            chosen = [i for i in task.instances if i.id in ids][:cap]
            level = task.meta["split"] if task.meta["split"] != "train" else "heldout_instance"
            if chosen:
                levels[level].append((task, chosen))
        return levels
