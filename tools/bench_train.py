"""Target tokens per second of the engine against a plain transformers loop (see --help)."""

import sys

from optiml_engine.benchmarks.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
