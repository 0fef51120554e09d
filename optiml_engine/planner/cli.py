"""`optiml plan RECIPE --gpus N [--gpu a100-40gb] [overrides]`: every layout's memory per GPU and
step time, best first.

Options and `section.key=value` overrides may come in any order. Exit status 0 when some layout
fits, 1 when none does (the last line says why), 2 for a user error.
"""

from __future__ import annotations

import argparse

from optiml_engine.errors import OptimlError
from optiml_engine.planner.hardware import GPUS, USABLE_FRACTION, gpu
from optiml_engine.planner.memory import SHARD_MODES
from optiml_engine.planner.params import model_params
from optiml_engine.planner.plan import Plan, layouts, recipe_shard

GIB = 2**30


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optiml plan", description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="section.key=value, anywhere on the line")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs in the whole job")
    parser.add_argument("--gpu", default="a100-80gb", choices=list(GPUS),
                        help="GPU model (default: %(default)s)")
    parser.add_argument("--gpus-per-node", type=int, default=8,
                        help="tensor parallelism stays inside a node (default: %(default)s)")
    parser.add_argument("--gpu-memory", type=float, default=None,
                        help="GiB per GPU, instead of the GPU model's")
    parser.add_argument("--shard", default="all", choices=["all", *SHARD_MODES],
                        help="sharding of weights/gradients/optimizer state to consider "
                        "(default: all)")
    parser.add_argument("--matmul-efficiency", type=float, default=None,
                        help="fraction of the GPU's peak the GEMMs reach (default: the GPU "
                        "table's)")
    parser.add_argument("--top", type=int, default=15, help="rows to print (default: 15)")
    parser.add_argument("--show", action="append", default=[], metavar="TPxPPxDP:SHARD",
                        help="also print every buffer and phase of these layouts, "
                        "e.g. 8x1x16:zero3")
    return parser


def parse_layout(text: str) -> tuple[int, int, int, str]:
    try:
        dims, shard = text.split(":")
        tp, pp, dp = (int(v) for v in dims.lower().split("x"))
    except ValueError:
        raise OptimlError(f"optiml plan --show {text}", "is not TPxPPxDP:SHARD",
                          "write e.g. --show 8x1x16:zero3") from None
    if shard not in SHARD_MODES:
        raise OptimlError(f"optiml plan --show {text}", f"unknown shard {shard!r}",
                          f"choose one of: {', '.join(SHARD_MODES)}")
    return tp, pp, dp, shard


def details(p: Plan) -> list[str]:
    mem, t = p.memory, p.time
    lines = [f"tp {p.tp} x pp {p.pp} x dp {p.dp}, {p.shard}, pipeline stage {p.pp_rank} "
             f"(the busiest): {p.params_per_gpu:,} parameters"]
    lines += [f"  held {name:<28} {b / GIB:8.2f} GiB" for name, b in mem.held.items()]
    for phase, extra in mem.phases.items():
        total = mem.phase_bytes(phase) / GIB
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in extra.items()) or "nothing more"
        lines.append(f"  {phase:<16} {total:8.2f} GiB in all ({parts})")
    lines.append(f"  step {t.seconds:.2f} s = compute {t.compute:.2f} + elementwise "
                 f"{t.elementwise:.2f} + tensor-parallel {t.tensor_parallel:.2f} + pipeline "
                 f"{t.pipeline:.2f} + data-parallel {t.data_parallel:.2f}")
    return lines


def row(p: Plan, mark: str) -> str:
    mem, t = p.memory, p.time
    held = mem.held
    phase = mem.peak_phase.split("/")[0].split(" ")[0]
    return (f"{mark}{p.tp:>2} {p.pp:>3} {p.dp:>4} {p.shard:>5} {p.params_per_gpu / 1e9:>8.2f}B "
            f"{(held['weights'] + held['gradients']) / GIB:>8.1f} "
            f"{(held['fp32 master'] + held['Adam moments']) / GIB:>8.1f} "
            f"{mem.peak_bytes / GIB:>7.1f} {phase:>9}  {'yes' if p.fits else 'no ':>4} "
            f"{t.seconds:>8.2f} {t.tokens_per_s:>9.0f} {t.tflops_per_gpu:>7.1f} "
            f"{t.mfu(p.peak_tflops) * 100:>5.1f}%")


def refusal(recipe, gpus: int, budget: float) -> str:
    """Why nothing fits, from the least any layout needs: the model state fully sharded."""
    n = model_params(recipe.model)["total"]
    least = 16 * n / gpus  # 2-byte weights and gradients, fp32 master and moments, all / gpus
    return (f"refused: no layout fits; even fully sharded (zero3) the weights, gradients and "
            f"optimizer state of {n / 1e9:.1f}B parameters need 16 B x {n / 1e9:.1f}B / {gpus} "
            f"GPUs = {least / GIB:.1f} GiB per GPU before any activation, and "
            f"{budget / GIB:.1f} GiB are usable: use more GPUs or a smaller model")


def main(argv: list[str]) -> int:
    from optiml_engine.config import load_recipe

    args = build_parser().parse_intermixed_args(argv)
    if args.gpus < 1 or args.gpus_per_node < 1:
        raise OptimlError("optiml plan", "--gpus and --gpus-per-node must be at least 1",
                          "pass positive counts")
    recipe = load_recipe(args.recipe, args.overrides)
    device = gpu(args.gpu)
    if args.gpu_memory is not None:
        from dataclasses import replace

        device = replace(device, memory_gib=args.gpu_memory)
    shards = SHARD_MODES if args.shard == "all" else (args.shard,)
    plans, skipped = layouts(recipe, args.gpus, device, shards, args.gpus_per_node,
                             args.matmul_efficiency)
    peak = plans[0].peak_tflops if plans else device.peak_tflops
    m, p, t = recipe.model, recipe.parallel, recipe.train
    print(f"{model_params(m)['total'] / 1e9:.2f}B parameters; seq {recipe.data.seq_length}, "
          f"micro-batch {t.micro_batch_size}, global batch {t.global_batch_size}, "
          f"{recipe.precision.dtype}, sp={p.sp}, recompute={p.recompute}, "
          f"virtual_stages={p.virtual_stages}")
    budget = device.memory_gib * USABLE_FRACTION * GIB
    print(f"{args.gpus} x {device.name} ({device.memory_gib:g} GiB, {budget / GIB:.1f} usable), "
          f"{args.gpus_per_node} per node; recipe layout tp {p.tp} x pp {p.pp}, "
          f"{recipe_shard(recipe)} (marked *)")
    print(f" {'tp':>2} {'pp':>3} {'dp':>4} {'shard':>5} {'params':>9} {'w+grads':>8} "
          f"{'optim':>8} {'peak':>7} {'at':>9}  {'fits':>4} {'step s':>8} {'tokens/s':>9} "
          f"{'TFLOP/s':>7} {'MFU':>6}")
    ordered = sorted(plans, key=lambda x: (not x.fits, x.time.seconds))
    own = [x for x in ordered if (x.tp, x.pp, x.shard) == (p.tp, p.pp, recipe_shard(recipe))]
    shown = ordered[:args.top] + [x for x in own if x not in ordered[:args.top]]
    for x in shown:
        print(row(x, "*" if x in own else " "))
    if len(ordered) > len(shown):
        print(f"  ... {len(ordered) - len(shown)} more (--top)")
    reasons: dict[str, list[str]] = {}
    for (tp_, pp_, dp_), why in skipped.items():
        reasons.setdefault(why.split(" (")[0], []).append(f"{tp_}x{pp_}x{dp_}")
    for why, which in reasons.items():
        print(f"skipped {len(which)} layouts ({', '.join(which[:6])}"
              f"{', ...' if len(which) > 6 else ''}): {why}")
    print("GiB per GPU: weights + gradients, fp32 master + Adam moments, and the peak over "
          "forward/backward, optimizer step and checkpoint save (docs/planner.md)")
    for text in args.show:
        tp_, pp_, dp_, shard = parse_layout(text)
        match = [x for x in plans if (x.tp, x.pp, x.dp, x.shard) == (tp_, pp_, dp_, shard)]
        if not match:
            raise OptimlError(f"optiml plan --show {text}", "is not among the layouts planned",
                              f"pick one whose tp x pp x dp = {args.gpus} (see the skipped lines)")
        print("\n".join(details(match[0])))
    if not any(x.fits for x in plans):
        print(refusal(recipe, args.gpus, budget))
        return 1
    best = ordered[0]
    print(f"best: tp {best.tp} x pp {best.pp} x dp {best.dp}, {best.shard}: "
          f"{best.peak_gib:.1f} GiB per GPU, {best.time.seconds:.2f} s per step, "
          f"{best.time.tokens_per_s:.0f} tokens/s, MFU {best.time.mfu(peak) * 100:.1f}%")
    return 0
