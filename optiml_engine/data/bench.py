"""`optiml data build BENCH.yaml --out DIR`: consolidate task collections into one bench.

Steps: read every source -> map categories -> de-duplicate datasets across benchmarks -> cap
instances per task -> assign the three held-out levels -> 13-gram leakage check -> render and
tokenise the training examples into memory-mapped shards -> manifest and report.

A rebuild whose inputs (config, every source file's content, the tokenizer, the generator code of
synthetic sources) are unchanged does nothing. The bench is built in a temporary sibling directory
and moved into place only when complete, so an interrupted build leaves nothing a later run trusts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..errors import OptimlError, read_json
from .bench_config import BenchConfig, SourceConfig, load_bench_config
from .bench_store import FORMAT_VERSION, BuiltBench, ShardWriter, sha256_file, task_record
from .bench_summary import table_one
from .consolidate import (
    TRAIN,
    Consolidated,
    Skipped,
    assign_levels,
    cap_instances,
    dedup_datasets,
    drop_excluded,
    eval_roles,
    map_categories,
)
from .leakage import find_leaks, find_task_leaks
from .prompt_config import apply_instructions
from .prompts import fit_to_length, render
from .sources import load_tasks
from .sources.common import expand
from .sources.flan import FLAN_TASK_CAP
from .sources.superni import load_superni
from .task import Task

UNIT_SUFFIXES = {"seq2seq": (".jsonl",), "cot": (".jsonl",), "dialogue": (".jsonl",),
                 "text": (".jsonl",), "promptsource": ("templates.yaml",)}


def tokenize_pairs(pairs: list[tuple[str, str]], tokenizer, max_tokens: int
                   ) -> list[tuple[list[int], list[int]]]:
    """The one place text becomes token ids; sources are left-truncated to fit `max_tokens`."""
    encode = getattr(tokenizer, "encode_batch", None) or (lambda xs: [tokenizer.encode(x)
                                                                       for x in xs])
    sources = encode([s for s, _ in pairs])
    targets = encode([t for _, t in pairs])
    return [fit_to_length(s, t, max_tokens) for s, t in zip(sources, targets, strict=True)]


def _code_fingerprint() -> str:
    here = Path(__file__).parent
    names = ["synthetic.py", "synthetic_specs.py", "prompts.py", "bench.py", "consolidate.py",
             "bench_store.py", "leakage.py", "prompt_config.py", "sources/promptsource.py",
             "sources/records.py", "sources/seq2seq.py"]
    return hashlib.sha256(b"".join((here / n).read_bytes() for n in names)).hexdigest()


def input_fingerprint(cfg: BenchConfig) -> str:
    h = hashlib.sha256(f"format {FORMAT_VERSION}\n".encode())
    h.update(cfg.path.read_bytes())
    h.update(_code_fingerprint().encode())
    tok = Path(cfg.tokenizer)
    h.update(cfg.tokenizer.encode())
    for file in (expand(tok, ("",)) if cfg.tokenizer != "byte" and tok.exists() else []):
        h.update(sha256_file(file).encode())
    for src in cfg.sources:
        h.update(f"\nsource {src}\n".encode())
        if src.path is not None and src.path.exists():
            for file in expand(src.path, ("",)):
                h.update(f"{file.relative_to(src.path) if src.path.is_dir() else file.name} "
                         f"{sha256_file(file)}\n".encode())
    return h.hexdigest()


def _read_source(src: SourceConfig, skipped: list[Skipped], limits, cot_target: str
                 ) -> list[Task]:
    if src.format == "synthetic_mix":  # its tasks name their own benchmarks
        from .synthetic_mix import synthetic_mix_tasks

        return synthetic_mix_tasks(src.seed, src.instances_per_task, cot_target)
    if src.format == "synthetic":
        from .synthetic import synthetic_tasks

        tasks = synthetic_tasks(src.seed, src.instances_per_task, src.num_tasks)
        for t in tasks:
            t.benchmark = src.name
        return tasks
    if not src.path.exists():
        if src.required:
            raise OptimlError(str(src.path), f"source {src.name} ({src.format}) not found",
                              "point `path` at the local collection, or set required: false")
        skipped.append(Skipped(str(src.path), f"optional source {src.name} not found"))
        return []
    if src.format == "superni":
        errors: list[tuple[str, str]] | None = [] if src.on_error == "skip" else None
        tasks = load_superni(src.path, split=src.split, errors=errors)
        skipped.extend(Skipped(f, f"bad task file: {msg}") for f, msg in errors or [])
        for t in tasks:
            t.benchmark = src.name
        return tasks
    units = expand(src.path, UNIT_SUFFIXES[src.format]) if src.format in UNIT_SUFFIXES \
        else [src.path]
    tasks = []
    for unit in units:
        try:
            tasks.extend(load_tasks(unit, src.format, benchmark=src.name, seed=src.seed,
                                    limits=limits, task_per=src.task_per,
                                    cot_target=cot_target))
        except OptimlError as err:
            if src.on_error == "fail":
                raise
            skipped.append(Skipped(str(unit), f"bad {src.format} input: {err}"))
    return tasks


def read_all(cfg: BenchConfig) -> tuple[list[Task], list[Skipped], dict[str, int]]:
    skipped: list[Skipped] = []
    tasks: list[Task] = []
    capped: dict[str, int] = {}
    for src in cfg.sources:
        cap = src.cap or (FLAN_TASK_CAP if src.format == "flan" else cfg.default_cap)
        for task in _read_source(src, skipped, cfg.templates, cfg.prompts.reasoning_target):
            dropped = cap_instances(task, cap, cfg.seed)
            if dropped:
                capped[task.name] = dropped
            tasks.append(task)
    seen: dict[str, str] = {}
    for task in tasks:
        if task.name in seen:
            raise OptimlError(task.source, f"task {task.name} also comes from {seen[task.name]}",
                              "give the sources distinct names or remove the duplicate")
        seen[task.name] = task.source
    empty = [t for t in tasks if not t.instances]
    skipped.extend(Skipped(t.source or t.name, f"task {t.name} has no instances") for t in empty)
    return [t for t in tasks if t.instances], skipped, capped


def _text(inst) -> str:
    return f"{inst.input} {inst.outputs[0]}"


def check_leakage(result: Consolidated, cfg: BenchConfig) -> list[dict]:
    """`leakage.unit: instance`: flag (train instance, eval instance) pairs, `drop_train` drops
    the training instance. `unit: task` (§2.3): flag (training task, evaluation task) pairs
    where more than `threshold` of the evaluation task's examples share an n-gram with the
    training task; `drop_train` removes the training task from the bench (listed in the report
    as skipped). Evaluation tasks are those of levels 1 and 2; level-3 instances belong to the
    training tasks themselves and are compared only in `unit: instance`."""
    if cfg.leakage.unit == "task":
        return _check_task_leakage(result, cfg)
    train, evals = [], []
    for task in result.tasks:
        held = set(result.eval_ids[task.name])
        if task.benchmark == "pretraining":
            continue
        for inst in task.instances:
            key = f"{task.name}/{inst.id}"
            (evals if inst.id in held else train).append((key, _text(inst)))
    leaks = find_leaks(train, evals, cfg.leakage.n, cfg.leakage.threshold)
    if cfg.leakage.action == "drop_train" and leaks:
        bad = {leak["train"] for leak in leaks}
        for task in result.tasks:
            task.instances = [i for i in task.instances if f"{task.name}/{i.id}" not in bad
                              or i.id in set(result.eval_ids[task.name])]
    return leaks


def _check_task_leakage(result: Consolidated, cfg: BenchConfig) -> list[dict]:
    train: dict[str, list[str]] = {}
    evals: dict[str, list[str]] = {}
    for task in result.tasks:
        if task.benchmark == "pretraining":
            continue
        if result.split[task.name] == TRAIN:
            held = set(result.eval_ids[task.name])
            train[task.name] = [_text(i) for i in task.instances if i.id not in held]
        else:
            evals[task.name] = [_text(i) for i in task.instances]
    leaks = find_task_leaks(train, evals, cfg.leakage.n, cfg.leakage.threshold)
    if cfg.leakage.action == "drop_train" and leaks:
        worst: dict[str, dict] = {}
        for leak in leaks:
            if leak["train"] not in worst or leak["share"] > worst[leak["train"]]["share"]:
                worst[leak["train"]] = leak
        benchmark = {t.name: t.benchmark for t in result.tasks}
        result.tasks = [t for t in result.tasks if t.name not in worst]
        for name, leak in sorted(worst.items()):
            del result.split[name], result.eval_ids[name]
            result.skipped.append(Skipped(name, f"leakage: {leak['share']:.1%} of eval task "
                                                f"{leak['eval']}'s examples share a "
                                                f"{cfg.leakage.n}-gram with it (§2.3)",
                                          benchmark[name]))
    return leaks


def prompts_per_task(task: Task) -> int:
    """Prompts a task's instances are rendered with (Table 1's "# prompts / task"): a merged
    PromptSource dataset's templates, a FLAN dataset's patterns, else 1."""
    templates = task.meta.get("templates")
    return len(templates) if isinstance(templates, list) else int(task.meta.get("patterns", 1))


def _write(result: Consolidated, cfg: BenchConfig, out: Path, fingerprint: str,
           leaks: list[dict], capped: dict[str, int], tokenizer) -> dict:
    writer = ShardWriter(out / "train", tokenizer.vocab_size)
    roles = eval_roles(result, cfg)
    entries = []
    with (out / "tasks.jsonl").open("w", encoding="utf-8") as tasks_file:
        for t_index, task in enumerate(result.tasks):
            held = set(result.eval_ids[task.name])
            split = result.split[task.name]
            train = [i for i in task.instances if i.id not in held] if split == TRAIN else []
            pairs = [render(task, inst, shots=cfg.train_shots, seed=cfg.seed, pool=train,
                            style=cfg.prompts.style) for inst in train]
            offset = len(writer.rows)
            for src, tgt in tokenize_pairs(pairs, tokenizer, cfg.max_example_tokens):
                writer.add(t_index, src, tgt)
            line = json.dumps(task_record(task, split, result.eval_ids[task.name]),
                              ensure_ascii=False, sort_keys=True)
            tasks_file.write(line + "\n")
            entries.append({
                "name": task.name, "benchmark": task.benchmark, "category": task.category,
                "dataset": task.dataset, "metric": task.metric, "split": split,
                "n_instances": len(task.instances), "n_train": len(train),
                "n_eval": len(held), "train_row_offset": offset,
                "eval_role": roles.get(task.name), "prompts": prompts_per_task(task),
                "sha256": hashlib.sha256(line.encode()).hexdigest()})
    storage = writer.close()
    categories: dict[str, dict] = {}
    for e in entries:
        c = categories.setdefault(e["category"], {"tasks": 0, "splits": {}})
        c["tasks"] += 1
        c["splits"][e["split"]] = c["splits"].get(e["split"], 0) + 1
    benchmarks: dict[str, int] = {}
    for e in entries:
        benchmarks[e["benchmark"]] = benchmarks.get(e["benchmark"], 0) + 1
    report = {"skipped": [vars(s) for s in result.skipped], "notes": result.notes,
              "capped": capped, "leakage": {"n": cfg.leakage.n, "threshold":
                                            cfg.leakage.threshold, "action": cfg.leakage.action,
                                            "unit": cfg.leakage.unit, "pairs": leaks}}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    manifest = {
        "format_version": FORMAT_VERSION, "name": cfg.name, "input_fingerprint": fingerprint,
        "seed": cfg.seed, "tokenizer": cfg.tokenizer, "vocab_size": tokenizer.vocab_size,
        "max_example_tokens": cfg.max_example_tokens, "train_shots": cfg.train_shots,
        "max_eval_instances": cfg.held_out.max_eval_instances,
        "prompts": cfg.prompts.style.to_dict(),  # PromptStyle.from_dict renders alike
        "dataset_aliases": cfg.aliases,  # the eval merges a dataset's tasks across benchmarks
        "held_out_categories": cfg.held_out.categories, "benchmarks": benchmarks,
        "categories": categories, "tasks": entries,
        # tasks removed by a bench rule, by rule: dedup (§2.1), Super-NI excluded_tasks.txt and
        # task-pair leakage (§2.3); each is listed with its reason in report.json `skipped`
        "removed": {kind: sum(s.reason.startswith(kind) for s in result.skipped)
                    for kind in ("duplicate", "excluded", "leakage")},
        "counts": {"tasks": len(entries), "train_examples": len(writer.rows),
                   "eval_instances": sum(e["n_eval"] for e in entries),
                   "skipped": len(result.skipped), "leaks": len(leaks)},
        **storage,
        "tasks_file": {"file": "tasks.jsonl", "sha256": sha256_file(out / "tasks.jsonl")},
        "report": {"file": "report.json", "sha256": sha256_file(out / "report.json")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest


def _install(tmp: Path, out: Path) -> None:
    """Move a finished build into place; the old bench (if any) is removed only afterwards."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def build_bench(config_path: str | Path, out_dir: str | Path, force: bool = False,
                overwrite: bool = False) -> dict:
    """Build (or find up to date) the bench described by `config_path` into `out_dir`.
    Returns the manifest, with `"up_to_date": True` when nothing had to be done. A non-empty
    `out_dir` that is not a bench (no manifest.json) is refused unless `overwrite`."""
    cfg = load_bench_config(config_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OptimlError(f"optiml data build --out {out}", "is a file", "choose a directory")
    if (not overwrite and out.is_dir() and any(out.iterdir())
            and not (out / "manifest.json").is_file()):
        raise OptimlError(f"optiml data build --out {out}", "is a non-empty directory that is "
                          "not a bench", "choose an empty or new directory, or pass --overwrite "
                          "to replace what it holds")
    fingerprint = input_fingerprint(cfg)
    manifest_file = out / "manifest.json"
    if not force and manifest_file.is_file():
        try:
            old = read_json(manifest_file)
        except OptimlError:
            old = None  # unreadable: rebuilt below
        if isinstance(old, dict) and old.get("input_fingerprint") == fingerprint:
            return {**old, "up_to_date": True}
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer)  # fail fast, before reading the collections
    tasks, skipped, capped = read_all(cfg)
    tasks, excluded = drop_excluded(tasks, cfg)
    skipped += excluded
    tasks, unmapped = map_categories(tasks, cfg)
    tasks, duplicates = dedup_datasets(tasks, cfg)
    # after dedup: a CrossFit / ExMix / T5 copy that is dropped needs no sentence
    instruction_notes = apply_instructions(tasks, cfg.prompts, str(cfg.path))
    if not tasks:
        raise OptimlError(str(cfg.path), "no tasks left to build a bench from",
                          "check the sources and the report of skipped items")
    result = assign_levels(tasks, cfg)
    result.skipped = skipped + unmapped + duplicates
    result.notes += instruction_notes
    leaks = check_leakage(result, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{time.monotonic_ns()}"
    try:
        tmp.mkdir()
        manifest = _write(result, cfg, tmp, fingerprint, leaks, capped, tokenizer)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**manifest, "up_to_date": False}


def summary(manifest: dict, out: Path) -> str:
    if manifest.get("up_to_date"):
        return f"{out}: up to date ({manifest['counts']['tasks']} tasks), nothing to do"
    c = manifest["counts"]
    splits: dict[str, int] = {}
    for t in manifest["tasks"]:
        splits[t["split"]] = splits.get(t["split"], 0) + 1
    by_split = ", ".join(f"{v} {k}" for k, v in sorted(splits.items()))
    removed = manifest.get("removed") or {}
    why = ", ".join(f"{v} {k}" for k, v in sorted(removed.items()) if v)
    return (f"{out}: {c['tasks']} tasks ({by_split}), {c['train_examples']} training examples, "
            f"{c['eval_instances']} eval instances, "
            f"{c['skipped']} skipped{f' ({why})' if why else ''}, {c['leaks']} leakage pairs "
            "(see report.json)")


def main(argv: list[str] | None = None) -> int:
    """`optiml data build BENCH.yaml --out DIR [--force]`."""
    parser = argparse.ArgumentParser(prog="optiml data", description="OPT-IML bench data")
    verbs = parser.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser("build", help="consolidate task collections into a bench")
    build.add_argument("config", help="bench YAML (see recipes/bench/)")
    build.add_argument("--out", required=True, help="output directory of the built bench")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty --out that is not a bench")
    args = parser.parse_args(argv)
    manifest = build_bench(args.config, args.out, force=args.force, overwrite=args.overwrite)
    print(summary(manifest, Path(args.out)))
    index = BuiltBench(args.out).index
    print(table_one(manifest, read_json(Path(args.out) / "report.json"),
                    index[:, 2] + index[:, 3]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OptimlError as e:
        print(f"optiml: error: {e}", file=sys.stderr)
        sys.exit(2)
