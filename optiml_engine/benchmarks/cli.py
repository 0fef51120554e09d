"""`optiml bench <what>`: each benchmark lives in its own module with a `main(argv)`."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "attention": ("optiml_engine.benchmarks.kernels", ["attention"]),
    "cross-entropy": ("optiml_engine.benchmarks.kernels", ["cross-entropy"]),
    "adamw": ("optiml_engine.benchmarks.kernels", ["adamw"]),
    "packing": ("optiml_engine.benchmarks.packing", []),
    "train": ("optiml_engine.benchmarks.train", []),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: optiml bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    module, prefix = BENCHMARKS[argv[0]]
    return importlib.import_module(module).main(prefix + argv[1:])
