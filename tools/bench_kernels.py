"""Kernel benchmarks: attention, cross-entropy and AdamW backends (CSV + PNG).

Usage: python tools/bench_kernels.py attention|cross-entropy|adamw [--out DIR] [--quick]
"""

import sys

from optiml_engine.benchmarks.kernels import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
