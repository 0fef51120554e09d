"""Bench data pipeline figures: build time and peak memory of a synthetic bench, the cost of a
no-op rebuild, and loader throughput (mixture stream -> memory-mapped examples -> C++ packer).

Usage: python tools/bench_data.py [--tasks 2000] [--instances 1000] [--seq-length 2048]
                                  [--loader-examples 200000] [--workdir DIR]
The build runs in a child process so its peak resident memory is measured alone.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _build(config: str, out: str, queue) -> None:
    from optiml_engine.data.bench import build_bench

    start = time.perf_counter()
    manifest = build_bench(config, out)
    queue.put((time.perf_counter() - start, manifest["counts"], manifest["up_to_date"]))


def timed_build(config: Path, out: Path) -> tuple[float, dict, bool, float]:
    """(seconds, counts, up_to_date, peak RSS in MiB) of a build in a fresh child process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_build, args=(str(config), str(out), queue))
    proc.start()
    seconds, counts, up_to_date = queue.get()
    proc.join()
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children
    return seconds, counts, up_to_date, peak_kib / 1024


def loader_throughput(bench: Path, examples: int, seq_length: int) -> dict:
    import itertools

    from optiml_engine.data.mixture import BenchMixture
    from optiml_engine.data.packing import pack_examples
    from optiml_engine.data.sampling import SamplingSpec

    start = time.perf_counter()
    mixture = BenchMixture(bench, SamplingSpec(scheme="eps", eps_cap=4096), seed=0)
    open_s = time.perf_counter() - start
    stream = ((s, t) for _, s, t in mixture.positions())
    start = time.perf_counter()
    read = list(itertools.islice(stream, examples))
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = 0
    for i in range(0, len(read), 8192):
        samples += len(pack_examples(read[i:i + 8192], seq_length))
    pack_s = time.perf_counter() - start
    return {"open_s": open_s, "examples": examples, "read_s": read_s, "pack_s": pack_s,
            "samples": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--loader-examples", type=int, default=200_000)
    p.add_argument("--workdir", help="keep the built bench here (default: a temp dir)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        config = work / "bench.yaml"
        config.write_text(yaml.safe_dump({
            "name": "bench-data", "seed": 0, "tokenizer": "byte",
            "sources": [{"name": "superni", "format": "synthetic", "num_tasks": args.tasks,
                         "instances_per_task": args.instances}],
            "held_out": {"categories": ["Textual Entailment"], "tasks_per_category": 1,
                         "instances": 0.1}}))
        out = work / "out"
        build_s, counts, _, peak_mib = timed_build(config, out)
        noop_s, _, up_to_date, _ = timed_build(config, out)
        size_mib = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        load = loader_throughput(out, args.loader_examples, args.seq_length)
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{mp.cpu_count()} cores, Python {platform.python_version()}")
    print(f"synthetic bench: {args.tasks} tasks x {args.instances} instances")
    print(f"build: {build_s:.1f} s, peak RSS {peak_mib:.0f} MiB, output {size_mib:.0f} MiB, "
          f"{counts['train_examples']} training examples, {counts['eval_instances']} eval "
          f"instances, {counts['leaks']} leakage pairs")
    print(f"no-op rebuild: {noop_s:.2f} s (up to date: {up_to_date})")
    print(f"loader: open {load['open_s']:.2f} s; {load['examples']} examples read in "
          f"{load['read_s']:.2f} s ({load['examples'] / load['read_s']:.0f} examples/s); packed "
          f"into {load['samples']} x {args.seq_length}-token samples in {load['pack_s']:.2f} s; "
          f"end to end {load['samples'] / (load['read_s'] + load['pack_s']):.0f} packed samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
