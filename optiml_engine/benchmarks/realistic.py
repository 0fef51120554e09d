"""`optiml bench train --realistic`: instruction-like lengths, OPT's vocabulary, three loops.

The examples are synthetic token ids (no download), deterministic from a seed, with the length
profile of instruction data: 97% of examples log-normal around a median of 55 tokens (most under
300), 3% uniform in 300-2048 (long contexts, summarisation); targets geometric with a mean of
1 + 4% of the example, so about 6% of all tokens carry a loss. Examples longer than a sample lose
their oldest source tokens in packing, exactly as the engine's packer treats real data.

The engine trains on packed samples; the two transformers loops then train on exactly the
examples the engine's timed steps held (as the packer left them), the same number per step, in
micro-batches padded to their longest example with gradients accumulated over the step:
  - random order (a plain loop over a shuffled dataset),
  - grouped by length (HF Trainer's `group_by_length`: mega-batches of 50 micro-batches,
    sorted by length within each, longest first).
The needed FLOPs (optiml_engine.model.flops) of those examples are the same for all three; the
engine's rate of them is reported against a large fp32 `torch.mm` measured in the same run.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import torch

VOCAB = 50272
FIRST_ID = 3  # 0-2 are <s>, <pad>, </s>


def realistic_examples(seed: int, n: int, vocab: int = VOCAB, max_len: int = 2048):
    """`n` (source ids, target ids) pairs with the profile above, deterministic from `seed`."""
    rng = np.random.default_rng([seed, 17])
    lengths = np.clip(np.rint(rng.lognormal(np.log(55), 0.85, n)), 4, max_len - 2).astype(int)
    long = rng.random(n) < 0.03
    lengths[long] = rng.integers(300, max_len - 1, int(long.sum()))
    targets = np.minimum(rng.geometric(1.0 / (1.0 + 0.04 * lengths)), lengths - 1)
    ids = rng.integers(FIRST_ID, vocab, int(lengths.sum()))
    out, at = [], 0
    for length, tgt in zip(lengths.tolist(), targets.tolist(), strict=True):
        ex = ids[at : at + length]
        out.append((ex[: length - tgt].tolist(), ex[length - tgt :].tolist()))
        at += length
    return out


def matmul_rate(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a large fp32 torch.mm on this machine now (best of `reps`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def random_order(steps_examples, micro: int, seed: int):
    """The steps' examples shuffled, re-cut into steps of the same sizes, then micro-batches."""
    flat = [e for step in steps_examples for e in step]
    order = np.random.default_rng([seed, 1]).permutation(len(flat))
    return _cut([flat[i] for i in order], [len(s) for s in steps_examples], micro)


def grouped_by_length(steps_examples, micro: int, seed: int):
    """HF's LengthGroupedSampler: shuffled, mega-batches of 50 micro-batches sorted by length
    (longest first), re-cut into steps of the same sizes."""
    flat = [e for step in steps_examples for e in step]
    order = np.random.default_rng([seed, 2]).permutation(len(flat)).tolist()
    mega = 50 * micro
    grouped = []
    for i in range(0, len(order), mega):
        grouped += sorted(order[i : i + mega], key=lambda j: -len(flat[j][0]))
    return _cut([flat[i] for i in grouped], [len(s) for s in steps_examples], micro)


def _cut(examples, sizes, micro):
    steps, at = [], 0
    for size in sizes:
        step = examples[at : at + size]
        steps.append([step[i : i + micro] for i in range(0, len(step), micro)])
        at += size
    return steps


def realistic_main(recipe, args) -> int:
    """The three loops on the same examples, `args.repeats` rounds interleaved (engine, random,
    grouped, engine, ...) so that load from other jobs hits each alike; the fp32 mm rate before
    every round and after the last (the highest kept); the load average next to each."""
    from optiml_engine.benchmarks.train import engine_throughput, hf_throughput, unpack
    from optiml_engine.model.flops import step_flops

    seed = recipe.train.seed
    examples = realistic_examples(seed, args.examples)
    lengths = np.array([len(s) + len(t) + 2 for s, t in examples])
    n_tgt = sum(len(t) + 1 for _, t in examples)
    load = [os.getloadavg()]
    mm = [matmul_rate()]
    micro = args.hf_micro_batch
    rows: dict[str, list[float]] = {"engine": [], "random": [], "grouped": []}
    needed = targets = per_step = 0.0
    for round_ in range(args.repeats):
        if round_:
            mm.append(matmul_rate())  # each round next to its own mm rate
        engine, seen = engine_throughput(recipe, args.steps, args.warmup, examples,
                                         profile=args.profile)
        rows["engine"].append(engine["target_tokens_per_s"])
        _said(len(rows["engine"]), "engine", rows["engine"][-1])
        timed = seen[args.warmup :]
        needed = sum(step_flops(recipe.model, step) for step in timed)
        targets = engine["target_tokens"]
        rows.setdefault("needed", []).append(needed / engine["seconds"])
        per_step = sum(len(unpack(step)) for step in timed) / len(timed)
        if args.engine_only:
            continue
        steps_examples = [unpack(step) for step in seen]
        warm, rest = steps_examples[: args.warmup], steps_examples[args.warmup :]
        warm_batches = [[s[i : i + micro] for i in range(0, len(s), micro)] for s in warm]
        for name, order in (("random", random_order), ("grouped", grouped_by_length)):
            hf = hf_throughput(recipe, None, args.warmup,
                               steps_batches=warm_batches + order(rest, micro, seed))
            rows[name].append(hf["target_tokens_per_s"])
            _said(len(rows[name]), f"transformers {name}", rows[name][-1])
        gc.collect()
    mm.append(matmul_rate())
    load.append(os.getloadavg())
    rate = max(mm)
    m = recipe.model
    print(f"threads {torch.get_num_threads()} | model {m.hidden_size}d x {m.num_layers} layers, "
          f"vocabulary {m.vocab_size} | {recipe.train.global_batch_size} packed samples of "
          f"{recipe.data.seq_length} tokens/step = {per_step:.0f} examples | {args.steps} timed "
          f"steps after {args.warmup} warm-up, {args.repeats} interleaved rounds")
    print(f"examples: {len(examples)} synthetic, median {np.median(lengths):.0f} tokens, mean "
          f"{lengths.mean():.0f}, {100 * np.mean(lengths < 300):.0f}% under 300, max "
          f"{lengths.max()}; targets {100 * n_tgt / lengths.sum():.1f}% of tokens | "
          f"transformers: micro-batches of {micro}, padded to their longest, accumulated per step")
    print(f"load average (1/5/15 min): before {_load(load[0])}, after {_load(load[-1])}")
    print(f"needed FLOPs (model/flops.py): {needed / max(targets, 1) / 1e6:.1f} MFLOP per target "
          f"token | fp32 torch.mm 2048^3: {' / '.join(f'{x / 1e9:.1f}' for x in mm)} GFLOP/s "
          f"(before each round, after the last; {rate / 1e9:.1f} kept)")
    print()
    print("| loop | target tok/s per round | best | engine / loop (best) | needed GFLOP/s (best) "
          "| of fp32 mm |")
    print("|---|---|---:|---:|---:|---:|")
    best_engine = max(rows["engine"])
    names = {"engine": "engine (packed)", "random": "transformers, padded, random order",
             "grouped": "transformers, padded, grouped by length"}
    for key, label in names.items():
        if not rows[key]:
            continue
        best = max(rows[key])
        flops = max(rows["needed"]) * best / best_engine  # same examples, same FLOPs
        print(f"| {label} | {' / '.join(f'{x:.1f}' for x in rows[key])} | {best:.1f} | "
              f"{best_engine / best:.2f}x | {flops / 1e9:.1f} | {100 * flops / rate:.0f}% |")
    return 0


def _said(round_: int, loop: str, tps: float) -> None:
    """A round's figure as soon as it exists: a run cut short still leaves them."""
    print(f"round {round_}: {loop} {tps:.1f} target tok/s (load {_load(os.getloadavg())})",
          flush=True)


def _load(avg) -> str:
    return " ".join(f"{x:.2f}" for x in avg)
