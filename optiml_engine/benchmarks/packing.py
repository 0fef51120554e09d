"""Packing benchmark: the C++ best-fit-decreasing packer against a pure-Python one.

Both implement the same deterministic rule, so they must return the same samples; the benchmark
checks that, then reports examples per second and the packing efficiency.
"""

from __future__ import annotations

import argparse
import time
from bisect import bisect_left, insort

import numpy as np

from optiml_engine import _C
from optiml_engine.data.packing import pack_lengths


def instruction_like_lengths(rng: np.random.Generator, n: int, capacity: int = 2048) -> np.ndarray:
    """Example lengths shaped like instruction data: log-normal body (median 120, most under 300
    tokens) and 5% spread uniformly up to the capacity."""
    body = rng.lognormal(mean=np.log(120), sigma=0.8, size=n)
    tail = rng.uniform(300, capacity, size=n)
    lengths = np.where(rng.random(n) < 0.05, tail, body)
    return np.clip(lengths.astype(np.int64), 4, capacity)


def python_best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing in pure Python: a sorted list of (free space, bin) searched with bisect.

    (free, bin) tuples order by free space then bin index, so bisect finds the tightest fit and,
    among equals, the lowest bin: the same rule as the C++ packer.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)  # stable
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        k = bisect_left(free, (n, -1))
        if k == len(free):
            b, left = len(bins), capacity - n
            bins.append([i])
        else:
            room, b = free.pop(k)
            left = room - n
            bins[b].append(i)
        if left > 0:
            insort(free, (left, b))
    return bins


def _best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run(n: int, capacity: int = 2048, seed: int = 0, repeats: int = 3) -> dict:
    lengths = instruction_like_lengths(np.random.default_rng(seed), n, capacity)
    cpp_s, cpp_bins = _best_time(lambda: pack_lengths(lengths, capacity), repeats)
    core_s, _ = _best_time(lambda: _C.pack_lengths(lengths, capacity), repeats)
    as_list = lengths.tolist()
    py_s, py_bins = _best_time(lambda: python_best_fit_decreasing(as_list, capacity), 1)
    if [b.tolist() for b in cpp_bins] != py_bins:
        raise AssertionError("C++ and Python packers disagree")
    return {
        "examples": n,
        "capacity": capacity,
        "samples": len(cpp_bins),
        "efficiency": float(lengths.sum()) / (len(cpp_bins) * capacity),
        "cpp_seconds": cpp_s,
        "core_seconds": core_s,
        "python_seconds": py_s,
        "cpp_examples_per_s": n / cpp_s,
        "core_examples_per_s": n / core_s,
        "python_examples_per_s": n / py_s,
        "speedup": py_s / cpp_s,
    }


def format_table(r: dict) -> str:
    rows = [
        ("packer", "seconds", "examples/s", "samples", "efficiency"),
        ("C++ pack_lengths (list of arrays)", f"{r['cpp_seconds']:.3f}",
         f"{r['cpp_examples_per_s']:,.0f}", str(r["samples"]), f"{100 * r['efficiency']:.3f}%"),
        ("C++ core only (_C, flat arrays)", f"{r['core_seconds']:.3f}",
         f"{r['core_examples_per_s']:,.0f}", str(r["samples"]), f"{100 * r['efficiency']:.3f}%"),
        ("Python (bisect)", f"{r['python_seconds']:.3f}", f"{r['python_examples_per_s']:,.0f}",
         str(r["samples"]), f"{100 * r['efficiency']:.3f}%"),
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(f"{r['examples']:,} examples, capacity {r['capacity']}: C++ is "
                 f"{r['speedup']:.0f}x faster (public API vs Python); identical samples")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optiml bench packing",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000,
                        help="examples to pack (default: %(default)s)")
    parser.add_argument("--capacity", type=int, default=2048,
                        help="tokens per packed sample (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="C++ timing: best of this many (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of seconds: 20,000 examples, one repeat")
    args = parser.parse_args(argv)
    n, repeats = (20_000, 1) if args.quick else (args.n, args.repeats)
    print(format_table(run(n, args.capacity, args.seed, repeats)))
    return 0
