"""How long a save holds up training, synchronous against checkpoint.async_save.

Usage: python tools/bench_async_save.py [--hidden 512] [--layers 8] [--repeat 2]
"""

import sys

from optiml_engine.benchmarks.async_save import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
