"""Examples per second of the C++ packer vs a pure-Python best-fit-decreasing packer.

Usage: python tools/bench_packing.py [--n 1000000] [--capacity 2048]
"""

import sys

from optiml_engine.benchmarks.packing import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
