"""`optiml bench train --profile FILE`: torch.profiler over the engine's timed steps, written as
a breakdown by part of the step (below) and the top ops by self CPU time.

Every op's self time is given to the nearest range or autograd node above it that names a part:
loader (`loader.next_step`), optimizer (`optimizer.step`: grad flatten, norm, clip, AdamW, copy
back), output projection + CE (`LinearCrossEntropy`, which computes its gradients in forward),
attention (the `attention` call of each layer: gathers, SDPA, scatters, and their backward
nodes), embeddings, linear layers (addmm / mm and their backward nodes), layer norms; the rest
of the ops (adds, ReLU, views, casts) are "other ops"; the self time of the step's own range is
Python and framework time between ops.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

ATTENTION_NODES = ("ScaledDotProduct", "IndexBackward", "IndexSelectBackward", "CatBackward",
                   "SplitWithSizesBackward", "UnbindBackward", "TransposeBackward")
PARTS = ["loader", "optimizer", "output projection + CE", "attention", "linear layers",
         "embeddings", "layer norms", "other ops", "python between ops"]


def part_of(names: list[str]) -> str | None:
    """The part a chain of event names (the op first, then its parents) belongs to."""
    for n in names:
        if n == "loader.next_step":
            return "loader"
        if n == "optimizer.step":
            return "optimizer"
        if "LinearCrossEntropy" in n:
            return "output projection + CE"
        if n == "attention" or any(a in n for a in ATTENTION_NODES):
            return "attention"
        if "EmbeddingBackward" in n or n == "aten::embedding":
            return "embeddings"
        if any(a in n for a in ("AddmmBackward", "MmBackward")) or n == "aten::linear":
            return "linear layers"
        if "LayerNormBackward" in n or n == "aten::layer_norm":
            return "layer norms"
    return None


def breakdown(prof) -> dict[str, float]:
    """Seconds of self CPU time per part (PARTS), summed over the profiled steps."""
    out: dict[str, float] = defaultdict(float)
    for e in prof.events():
        names, parent = [e.name], e.cpu_parent
        while parent is not None:
            names.append(parent.name)
            parent = parent.cpu_parent
        part = part_of(names)
        if part is None:
            part = "python between ops" if e.name == "train_step" else "other ops"
        out[part] += e.self_cpu_time_total / 1e6
    return {p: out.get(p, 0.0) for p in PARTS}


@contextlib.contextmanager
def named_parts(trainer):
    """Ranges around the engine's attention calls and optimizer step while profiling."""
    from optiml_engine.model import opt

    attention, step = opt.attention, trainer.engine.optimizer.step

    def ranged_attention(*a, **k):
        with torch.profiler.record_function("attention"):
            return attention(*a, **k)

    def ranged_step(*a, **k):
        with torch.profiler.record_function("optimizer.step"):
            return step(*a, **k)

    opt.attention, trainer.engine.optimizer.step = ranged_attention, ranged_step
    try:
        yield
    finally:
        opt.attention = attention
        del trainer.engine.optimizer.step  # back to the class's method


def write_profile(prof, path: str, steps: int, seconds: float,
                  faults: int = 0) -> dict[str, float]:
    """`faults`: minor page faults during the profiled steps. The profiler's own allocations
    break glibc's reuse of freed blocks (training/cpu_alloc.py), so the large fresh buffers of
    the output projection fault their pages in under it (measured: about 10k faults and 80 ms
    per call of its `sub`, against none and 3 ms in a timed run): the header says how many,
    since those milliseconds are the profiler's, not the step's."""
    parts = breakdown(prof)
    total = sum(parts.values())
    lines = [f"# torch.profiler, CPU, {steps} timed engine steps, {seconds:.2f} s wall "
             f"(profiled), threads {torch.get_num_threads()}, {faults / steps:.0f} minor page "
             "faults per step (without the profiler: next to none after the first steps)", "",
             "## where the step's time goes (self CPU time, module docstring)", "",
             "| part | s per step | share |", "|---|---:|---:|"]
    lines += [f"| {p} | {s / steps:.3f} | {100 * s / total:.1f}% |" for p, s in parts.items()]
    lines += [f"| total | {total / steps:.3f} | 100% |", "", "## top ops by self CPU time", ""]
    averages = prof.key_averages()
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.write(averages.table(sort_by="self_cpu_time_total", row_limit=30,
                               max_name_column_width=60))
        f.write("\n")
    print(f"profile of the engine's timed steps: {path}")
    print("\n".join(lines[4:5 + len(parts) + 1]))
    return parts
