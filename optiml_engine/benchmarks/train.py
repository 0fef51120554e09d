"""Training throughput: the engine (packed samples) against a plain transformers loop (padded).

Both train the same OPT dimensions on the same examples for the same number of optimizer steps,
one after the other in one process, and report target tokens per second; the ratio is the
figure of merit (padding wastes compute on pad tokens; packing does not). On a GPU both run
there: the engine in the recipe's precision, transformers with fp32 weights under autocast to
that dtype and `AdamW(fused=True)`; `--hf-micro-batch N` splits each step's examples (in random
order) into padded batches of N, as a plain loop with gradient accumulation would. MFU counts
the work the step needs (dense layers on every example token, causal attention inside each
example, the output projection on target tokens), x3 for forward + backward, over a peak rate.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import time

import torch

# The H200's bf16 matrix rate as measured in this workplace (KINDS.md: an 8192^3 bf16 product
# through PyTorch, 769-798 TFLOP/s on random data); its datasheet says about 990 dense.
H200_BF16_PEAK = 790e12


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _minor_faults() -> int:
    """Pages this process has faulted in so far (0 where getrusage does not exist)."""
    try:
        import resource
    except ImportError:  # not Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def engine_throughput(recipe, steps: int, warmup: int, examples=None,
                      profile: str | None = None) -> tuple[dict, list]:
    """The engine's figures over the timed steps, and the micro-batches of every step.
    `examples` ((src, tgt) id pairs) replace the recipe's data, packed into
    `data.seq_length`-token samples; `profile` names a file for torch.profiler's breakdown of
    the timed steps (benchmarks/profile_step.py)."""
    from optiml_engine.data.loader import epoch_loader
    from optiml_engine.data.packing import pack_examples
    from optiml_engine.training.trainer import Trainer

    trainer = Trainer(recipe, verbose=False)
    if examples is not None:
        t = recipe.train
        trainer.loader = epoch_loader(pack_examples(examples, recipe.data.seq_length),
                                      t.global_batch_size, t.micro_batch_size, seed=t.seed)
    trainer.model.train()
    pad_id = trainer.tokenizer.pad_id
    seen = []
    next_step = trainer.loader.next_step

    def recording_next_step():
        with torch.profiler.record_function("loader.next_step"):
            seen.append(next_step())
        return seen[-1]

    trainer.loader.next_step = recording_next_step
    losses = []
    try:
        for _ in range(warmup):
            trainer.train_step()
        _sync()
        with contextlib.ExitStack() as stack:
            if profile:
                from optiml_engine.benchmarks.profile_step import named_parts

                stack.enter_context(named_parts(trainer))
                prof = stack.enter_context(torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU]))
            faults, target, start = _minor_faults(), 0.0, time.perf_counter()
            for _ in range(steps):
                with torch.profiler.record_function("train_step"):
                    out = trainer.train_step()
                target += out["target_tokens"]
                losses.append(out["loss"])
            _sync()
            seconds = time.perf_counter() - start
            faults = _minor_faults() - faults
        if profile:
            from optiml_engine.benchmarks.profile_step import write_profile

            write_profile(prof, profile, steps, seconds, faults)
    finally:
        trainer.close()  # gives back the grid (and a checkpoint.dir lock) it took
    timed = [b for step in seen[warmup:] for b in step]
    real = sum(float((b["tokens"] != pad_id).sum()) for b in timed)
    capacity = sum(b["tokens"].numel() for b in timed)
    return {"target_tokens_per_s": target / seconds, "tokens_per_s": real / seconds,
            "seconds": seconds, "target_tokens": target, "tokens": real,
            "packing_efficiency": real / capacity, "first_loss": losses[0],
            "last_loss": losses[-1]}, seen


def unpack(micro_batches) -> list[tuple[list[int], int]]:
    """The examples of one step: (`</s> src tgt </s>` ids, number of target tokens incl. `</s>`)."""
    examples = []
    for batch in micro_batches:
        for tokens, docs, mask in zip(batch["tokens"], batch["doc_ids"], batch["loss_mask"],
                                      strict=True):
            for doc in docs.unique():
                ids = tokens[docs == doc]
                if ids[0] == 2:  # padding has an id of its own and starts with pad
                    examples.append((ids.tolist(), int(mask[docs == doc].sum())))
    return examples


def padded_batch(examples):
    """Right-padded ids, attention mask and labels (-100 off target) for transformers."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), 1)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100)
    for row, (tokens, n_target) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        labels[row, len(tokens) - n_target : len(tokens)] = ids[row, len(tokens) - n_target :
                                                                len(tokens)]
    return ids, mask, labels


def hf_micro_batches(examples, micro_batch: int | None, seed: int) -> list[list]:
    """The step's examples as padded batches: all in one, or `micro_batch` at a time in a
    random order (a plain loader does not sort by length)."""
    if not micro_batch:
        return [examples]
    order = list(examples)
    random.Random(seed).shuffle(order)
    return [order[i:i + micro_batch] for i in range(0, len(order), micro_batch)]


def hf_throughput(recipe, steps_examples, warmup: int, micro_batch: int | None = None,
                  steps_batches=None) -> dict:
    """A plain transformers loop over the same examples, padded per (micro-)batch; or over
    `steps_batches` (per step, its micro-batches of examples: the realistic mode's orders)."""
    import transformers

    m = recipe.model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.precision.dtype)
    torch.manual_seed(recipe.train.seed)
    config = transformers.OPTConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, ffn_dim=m.ffn_hidden_size,
        max_position_embeddings=m.max_position_embeddings,
        word_embed_proj_dim=m.word_embed_proj_dim, do_layer_norm_before=m.pre_layer_norm,
        dropout=m.dropout)
    with device:
        model = transformers.OPTForCausalLM(config).train()
    fused = dict(fused=True) if device.type == "cuda" else dict(foreach=True)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr, **fused)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    if steps_batches is None:
        steps_batches = [hf_micro_batches(examples, micro_batch, recipe.train.seed + i)
                         for i, examples in enumerate(steps_examples)]
    target = real = padded = 0.0
    start = time.perf_counter()
    for i, batches in enumerate(steps_batches):
        if i == warmup:
            _sync()
            target = real = padded = 0.0
            start = time.perf_counter()
        step_target = sum(n for batch in batches for _, n in batch)
        for batch in batches:
            ids, mask, labels = (t.to(device) for t in padded_batch(batch))
            n_target = sum(n for _, n in batch)
            with autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            # HF's loss is this batch's mean; weight it so the step's gradient is the mean over
            # the whole step's target tokens, as the engine's is.
            scaler.scale(loss * (n_target / step_target)).backward()
            padded += ids.numel()
            real += sum(len(t) for t, _ in batch)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        target += step_target
    _sync()
    seconds = time.perf_counter() - start
    del model, opt
    return {"target_tokens_per_s": target / seconds, "tokens_per_s": real / seconds,
            "seconds": seconds, "target_tokens": target, "tokens": real,
            "padding_efficiency": real / padded if padded else None}


def examples_flops(model_cfg, examples) -> float:
    """Needed FLOPs of (ids, n_target) examples, forward + backward (model/flops.py)."""
    from optiml_engine.model.flops import model_flops

    return model_flops(model_cfg, [len(ids) for ids, _ in examples],
                       target_tokens=sum(n for _, n in examples))


def matmul_tflops() -> float:
    """The measured bf16 matrix rate of this GPU (an 8192^3 product; 512^3 fp32 on a CPU)."""
    if not torch.cuda.is_available():
        a, b = torch.randn(512, 512), torch.randn(512, 512)
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        return 5 * 2 * 512**3 / (time.perf_counter() - start) / 1e12
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 10 * 2 * n**3 / (begin.elapsed_time(end) / 1e3) / 1e12


def measure(recipe, steps: int, warmup: int, hf_micro_batch: int | None = None,
            peak: float = H200_BF16_PEAK) -> dict:
    """Engine and transformers on the same examples, both over the same timed steps."""
    engine, seen = engine_throughput(recipe, steps, warmup)
    gc.collect()  # the engine's model and optimizer go before transformers builds its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    steps_examples = [unpack(step) for step in seen]
    hf = hf_throughput(recipe, steps_examples, warmup, hf_micro_batch)
    timed = [e for step in steps_examples[warmup:] for e in step]
    flops = examples_flops(recipe.model, timed)
    engine["mfu"] = flops / engine["seconds"] / peak
    hf["mfu"] = flops / hf["seconds"] / peak
    return {"engine": engine, "transformers": hf,
            "ratio": engine["target_tokens_per_s"] / hf["target_tokens_per_s"],
            "model_flops": flops, "peak_flops": peak,
            "examples_per_step": len(timed) / steps, "steps": steps, "warmup": warmup,
            "hf_micro_batch": hf_micro_batch}


# --quick: the embedded synthetic set (no bench to build), small steps, 2 timed after 1.
QUICK = ["data.bench=null", "data.synthetic=true", "data.synthetic_examples=200",
         "train.micro_batch_size=4", "train.global_batch_size=4"]


def realistic_overrides(width: int) -> list[str]:
    """--realistic: OPT's vocabulary, `width` x 4 layers (heads of 64), 1024-token samples, 8 per
    step; the recipe's own data is replaced by benchmarks/realistic.py's examples."""
    return ["data.bench=null", "data.synthetic=true", "data.synthetic_examples=8",
            "model.vocab_size=50272", f"model.hidden_size={width}", "model.num_layers=4",
            f"model.num_heads={width // 64}", "model.max_position_embeddings=2048",
            "data.seq_length=1024", "train.micro_batch_size=4", "train.global_batch_size=8"]


def main(argv=None) -> int:
    from optiml_engine.config import load_recipe

    parser = argparse.ArgumentParser(prog="optiml bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/demo.yaml",
                        help="the model and data to train (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed optimizer steps (default: 10; 4 with --realistic)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default: 2; 1 with --realistic)")
    parser.add_argument("--hf-micro-batch", type=int, default=None,
                        help="transformers: examples per padded batch (default: a step's "
                        "examples in one batch; 8 with --realistic)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run of seconds: 2 steps after 1, with {' '.join(QUICK)}")
    parser.add_argument("--realistic", action="store_true",
                        help="instruction-like synthetic ids (benchmarks/realistic.py), OPT's "
                             "vocabulary 50272, 4 layers, 1024-token samples; baselines: "
                             "transformers padded in random order and grouped by length; the "
                             "needed-FLOP rate against a large fp32 torch.mm in the same run")
    parser.add_argument("--width", type=int, default=256, choices=[256, 512, 768],
                        help="model width with --realistic (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=2000,
                        help="synthetic examples with --realistic (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved rounds of the three loops with --realistic "
                             "(default: %(default)s)")
    parser.add_argument("--engine-only", action="store_true",
                        help="with --realistic: skip the transformers loops (for profiling)")
    parser.add_argument("--profile", metavar="FILE",
                        help="with --realistic: write torch.profiler's breakdown of the "
                             "engine's timed steps here")
    parser.add_argument("overrides", nargs="*", help="section.key=value recipe overrides")
    args = parser.parse_args(argv)
    realistic = args.realistic
    if args.profile and not realistic:
        parser.error("--profile needs --realistic")
    default_steps, default_warmup = (4, 1) if realistic else (10, 2)
    args.steps = default_steps if args.steps is None else args.steps
    args.warmup = default_warmup if args.warmup is None else args.warmup
    if args.quick and realistic:  # a smoke run of the realistic mode: one round of 1 step
        args.steps, args.warmup, args.repeats, args.examples = 1, 1, 1, 300
    elif args.quick:
        args.steps, args.warmup, args.overrides = 2, 1, [*QUICK, *args.overrides]
    if realistic:
        args.hf_micro_batch = args.hf_micro_batch or 8
        args.overrides = [*realistic_overrides(args.width), *args.overrides]
    recipe = load_recipe(args.recipe, [*args.overrides, "model.dropout=0.0",
                                       "checkpoint.dir=null", "logging.dir=null"])
    if realistic:
        from optiml_engine.benchmarks.realistic import realistic_main

        return realistic_main(recipe, args)
    figures = measure(recipe, args.steps, args.warmup, args.hf_micro_batch)
    engine, hf = figures["engine"], figures["transformers"]
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"threads {torch.get_num_threads()}"
    print(f"{where} | model {recipe.model.hidden_size}d x "
          f"{recipe.model.num_layers} layers | {recipe.train.global_batch_size} packed samples of "
          f"{recipe.data.seq_length} tokens/step = {figures['examples_per_step']:.0f} examples, "
          f"padded per {f'batch of {mb}' if (mb := args.hf_micro_batch) else 'step'} for "
          f"transformers | {args.steps} timed steps after {args.warmup} warm-up")
    print(f"engine (packed):        {engine['target_tokens_per_s']:10.0f} target tokens/s")
    print(f"transformers (padded):  {hf['target_tokens_per_s']:10.0f} target tokens/s")
    print(f"ratio engine / transformers: {figures['ratio']:.2f}x")
    if torch.cuda.is_available():
        print(f"MFU (vs {H200_BF16_PEAK / 1e12:.0f} TFLOP/s): engine {engine['mfu']:.1%}, "
              f"transformers {hf['mfu']:.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0
