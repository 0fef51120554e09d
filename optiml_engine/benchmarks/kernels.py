"""Kernel benchmark: attention, cross-entropy and AdamW backends side by side.

    python tools/bench_kernels.py attention|cross-entropy|adamw [--out DIR] [--quick]

`--quick` (a smoke run of seconds): on a CPU, one attention shape, 512 cross-entropy tokens
measured in this process, a 2-layer AdamW layout, 1 + 3 calls each.

On a GPU every available backend is timed with `triton.testing.do_bench` at the issue's sizes
(attention: 2048-token rows of ~8 examples, bf16, head dims 64/80/128; cross-entropy: 16k tokens
x 50272; AdamW: OPT-1.3B's parameters). Without one, the CPU backends are measured at smaller
sizes and the Triton/CUDA rows are reported as needing a GPU. Writes <kind>.csv and <kind>.png.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from optiml_engine.benchmarks import kernel_cases as cases

GPU = torch.cuda.is_available()
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def time_ms(fn, warmup: int = 2, reps: int = 5, quick: bool = False) -> float:
    """Median milliseconds per call (do_bench on a GPU); `quick`: 1 + 3 calls on a CPU."""
    if GPU:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100))
    if quick:
        warmup, reps = 1, 3
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def machine() -> str:
    if GPU:
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    threads = torch.get_num_threads()
    return f"CPU {platform.processor() or platform.machine()}, {threads} threads, torch " \
           f"{torch.__version__}"


# The GPU sizes, then the cost of attention dropout at one of them:
# (batch, seq, heads, head dim, examples per row, dtype, dropout).
GPU_ATTENTION = [(4, 2048, 16, d, 8, "bf16", 0.0) for d in (64, 80, 128)] + \
    [(4, 2048, 16, 64, 8, "bf16", 0.1)]


def bench_attention(quick: bool, configs: list[tuple] | None = None,
                    interpret: bool = False) -> list[dict]:
    """`configs`: rows as in GPU_ATTENTION (default: those on a GPU, small ones on a CPU);
    `interpret`: time the Triton kernel on a CPU too (TRITON_INTERPRET=1, a dry run)."""
    device, rows = ("cuda", []) if GPU else ("cpu", [])
    if configs is None and GPU:
        configs = GPU_ATTENTION
    elif configs is None:
        configs = [(1, 1024, 4, 64, 8, "fp32", 0.0)] if quick else \
            [(1, 1024, 4, d, 8, "fp32", 0.0) for d in (64, 80)] + [(1, 2048, 4, 64, 8, "fp32", 0.0)]
    for batch, seq, heads, dim, n_ex, dtype, drop in configs:
        fns, flops = cases.attention_cases(batch, seq, heads, dim, n_ex, DTYPES[dtype], device,
                                           dropout_p=drop, interpret=interpret)
        for backend, fn in fns.items():
            ms = time_ms(fn, quick=quick)
            rows.append(dict(kernel="attention", backend=backend, shape=f"B{batch} S{seq} H{heads}"
                             f" D{dim} {n_ex}ex {dtype}" + (f" dropout {drop}" if drop else ""),
                             ms=round(ms, 3), tflops=round(flops / ms / 1e9, 4)))
    return rows


def _ce_peak_child(variant, tokens, vocab, hidden, dtype, targets, queue):
    """In a fresh process: peak RSS growth (bytes) of one forward + backward."""
    torch.set_num_threads(1)
    inputs = cases.cross_entropy_inputs(tokens, vocab, hidden, DTYPES[dtype], "cpu",
                                        target_fraction=targets)

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    base = rss("VmRSS:")
    start = time.perf_counter()
    cases.cross_entropy_variant(variant, *inputs)
    queue.put((rss("VmHWM:") - base, (time.perf_counter() - start) * 1e3))


def bench_cross_entropy(quick: bool, tokens: int | None = None, targets: float = 0.7,
                        hidden: int | None = None, vocab: int = 50272,
                        interpret: bool = False) -> list[dict]:
    """`interpret`: the Triton variants on a CPU too (TRITON_INTERPRET=1, a dry run)."""
    rows = []
    if GPU:
        tokens, hidden, dtype = tokens or 16384, hidden or 2048, "bf16"
    else:
        tokens, hidden, dtype = tokens or (512 if quick else 4096), hidden or 768, "fp32"
    shape = f"{tokens} tok ({targets:.0%} targets) x {vocab} vocab, hidden {hidden}, {dtype}"
    for variant in cases.cross_entropy_variants("cuda" if GPU else "cpu", interpret):
        if GPU:
            inputs = cases.cross_entropy_inputs(tokens, vocab, hidden, DTYPES[dtype], "cuda",
                                                target_fraction=targets)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            cases.cross_entropy_variant(variant, *inputs)
            peak = torch.cuda.max_memory_allocated() - base
            ms = time_ms(lambda v=variant, i=inputs: cases.cross_entropy_variant(v, *i))
            del inputs
        elif quick:  # in this process, not a fresh one per variant: the peak is approximate
            results, threads = [], torch.get_num_threads()
            _ce_peak_child(variant, tokens, vocab, hidden, dtype, targets,
                           SimpleNamespace(put=results.append))
            torch.set_num_threads(threads)
            (peak, ms), = results
        else:
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            child = ctx.Process(target=_ce_peak_child,
                                args=(variant, tokens, vocab, hidden, dtype, targets, queue))
            child.start()
            peak, ms = queue.get(timeout=600)
            child.join()
        rows.append(dict(kernel="cross_entropy", backend=variant, shape=shape, ms=round(ms, 1),
                         peak_extra_mb=round(peak / 2**20, 1)))
    return rows


def bench_adamw(quick: bool, layout: tuple | None = None, interpret: bool = False) -> list[dict]:
    """`layout`: (shapes, dtype, label) to time instead of the default one for the device;
    `interpret`: the Triton backend on a CPU too (TRITON_INTERPRET=1, a dry run)."""
    if layout is not None:
        shapes, dtype, label = layout
    elif GPU:  # OPT-1.3B: hidden 2048, 24 layers
        shapes, dtype, label = cases.opt_layer_shapes(2048, 24, 50272, 2050), "bf16", "OPT-1.3B"
    else:  # OPT-125m's tensor layout (12 layers) at width 256: ~13M params, 150 tensors
        layers, vocab = (2, 2048) if quick else (12, 8192)
        shapes, dtype, label = cases.opt_layer_shapes(256, layers, vocab, 2050), "fp32", \
            f"OPT layout, {layers} layers, width 256"
    rows = []
    fns, n, bytes_moved = cases.adamw_cases(shapes, DTYPES[dtype], "cuda" if GPU else "cpu",
                                            interpret)
    for backend, fn in fns.items():
        ms = time_ms(fn, quick=quick)
        rows.append(dict(kernel="adamw", backend=backend,
                         shape=f"{label}: {n / 1e6:.1f}M params, {len(shapes)} tensors, {dtype}",
                         ms=round(ms, 3), gbps=round(bytes_moved / ms / 1e6, 2)))
    return rows


def add_speedups(rows: list[dict]) -> None:
    """speedup_vs_<backend>: how many times faster than each other backend on the same shape."""
    for row in rows:
        for other in rows:
            if other["shape"] == row["shape"] and other is not row:
                row[f"speedup_vs_{other['backend']}"] = round(other["ms"] / row["ms"], 2)


def write_outputs(rows: list[dict], kind: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / f"{kind}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(len(shapes), 1, figsize=(8, 2.5 * len(shapes)), squeeze=False)
    for ax, shape in zip(axes[:, 0], shapes, strict=True):
        sub = [r for r in rows if r["shape"] == shape]
        ax.barh([r["backend"] for r in sub], [r["ms"] for r in sub])
        ax.set_title(shape, fontsize=9)
        ax.set_xlabel("ms per call (lower is better)")
    fig.tight_layout()
    fig.savefig(out / f"{kind}.png", dpi=100)
    plt.close(fig)


BENCHES = {"attention": bench_attention, "cross-entropy": bench_cross_entropy,
           "adamw": bench_adamw}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optiml bench", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=list(BENCHES))
    parser.add_argument("--out", default="bench_out/kernels",
                        help="directory for CSV and PNG (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer repetitions: a smoke run of seconds")
    parser.add_argument("--tokens", type=int, help="cross-entropy: tokens (default: 16k on a "
                        "GPU, 4096 on a CPU, 512 with --quick)")
    parser.add_argument("--targets", type=float, default=0.7,
                        help="cross-entropy: fraction of tokens that carry a loss "
                        "(default: %(default)s)")
    args = parser.parse_args(argv)
    extra = {"tokens": args.tokens, "targets": args.targets} if args.kind == "cross-entropy" \
        else {}
    rows = BENCHES[args.kind](args.quick, **extra)
    add_speedups(rows)
    write_outputs(rows, args.kind.replace("-", "_"), Path(args.out))
    print(f"# {args.kind} on {machine()}")
    for row in rows:
        print(", ".join(f"{k}={v}" for k, v in row.items()))
    if not GPU:
        print("# No GPU: Triton, CUDA and apex figures need a GPU; these are the CPU backends.")
    print(f"# wrote {args.out}/{args.kind.replace('-', '_')}.csv and .png")
    return 0
