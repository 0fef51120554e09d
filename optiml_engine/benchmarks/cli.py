"""`optiml bench <what>`: each benchmark lives in its own module with a `main(argv)`."""

from __future__ import annotations

import importlib
import sys
import textwrap

from optiml_engine.errors import OptimlError

# verb: (module, argv prefix, what it measures)
BENCHMARKS = {
    "attention": ("optiml_engine.benchmarks.kernels", ["attention"],
                  "packed-sequence causal attention, forward + backward, per backend (SDPA with "
                  "a mask, SDPA per example; Triton and flash-attn on a GPU): ms and TFLOP/s"),
    "cross-entropy": ("optiml_engine.benchmarks.kernels", ["cross-entropy"],
                      "output projection + masked cross-entropy, forward + backward, per "
                      "variant (unfused, fused gradient, chunked; Triton on a GPU): ms and the "
                      "peak extra memory"),
    "adamw": ("optiml_engine.benchmarks.kernels", ["adamw"],
              "one AdamW step over an OPT parameter layout, per backend (the engine's and "
              "torch.optim's): ms and GB/s"),
    "packing": ("optiml_engine.benchmarks.packing", [],
                "the C++ best-fit-decreasing packer against a pure-Python one on "
                "instruction-like lengths: examples/s and packing efficiency"),
    "train": ("optiml_engine.benchmarks.train", [],
              "training throughput of the engine (packed samples) against a plain transformers "
              "loop (padded): target tokens/s and their ratio"),
}


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = [f"usage: optiml bench {{{','.join(BENCHMARKS)}}} [--quick] [options]", "",
             "Kernel and system benchmarks (figures in docs/benchmarks.md). Each verb has its "
             "own options:", "`optiml bench VERB --help`; `--quick` runs any of them at small "
             "sizes in seconds.", "", "verbs:"]
    lines += [textwrap.fill(what, 96, initial_indent=f"  {verb.ljust(width)}  ",
                            subsequent_indent=" " * (width + 4), break_on_hyphens=False)
              for verb, (_, _, what) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in BENCHMARKS:
        raise OptimlError("optiml bench", f"unknown benchmark '{argv[0]}'",
                          f"choose from: {', '.join(BENCHMARKS)}")
    module, prefix, _ = BENCHMARKS[argv[0]]
    return importlib.import_module(module).main(prefix + argv[1:])
