"""Training throughput: the engine (packed samples) against a plain transformers loop (padded).

Both train the same OPT dimensions on the same examples for the same number of optimizer steps,
one after the other in one process, and report target tokens per second; the ratio is the
figure of merit (padding wastes compute on pad tokens; packing does not).
"""

from __future__ import annotations

import argparse
import time

import torch


def engine_throughput(recipe, steps: int, warmup: int) -> tuple[float, list]:
    """Target tokens/s of the engine, and the micro-batches of every step it trained on."""
    from optiml_engine.training.trainer import Trainer

    trainer = Trainer(recipe, verbose=False)
    trainer.model.train()
    seen = []
    next_step = trainer.loader.next_step

    def recording_next_step():
        seen.append(next_step())
        return seen[-1]

    trainer.loader.next_step = recording_next_step
    try:
        for _ in range(warmup):
            trainer.train_step()
        tokens, start = 0.0, time.perf_counter()
        for _ in range(steps):
            tokens += trainer.train_step()["target_tokens"]
    finally:
        trainer.close()  # gives back the grid (and a checkpoint.dir lock) it took
    return tokens / (time.perf_counter() - start), seen


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


def hf_throughput(recipe, steps_examples, warmup: int) -> float:
    """Target tokens/s of a plain transformers loop over the same examples, padded per step."""
    import transformers

    m = recipe.model
    torch.manual_seed(recipe.train.seed)
    config = transformers.OPTConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, ffn_dim=m.ffn_hidden_size,
        max_position_embeddings=m.max_position_embeddings,
        word_embed_proj_dim=m.word_embed_proj_dim, do_layer_norm_before=m.pre_layer_norm,
        dropout=m.dropout)
    model = transformers.OPTForCausalLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr, foreach=True)
    tokens, start = 0.0, time.perf_counter()
    for i, examples in enumerate(steps_examples):
        if i == warmup:
            tokens, start = 0.0, time.perf_counter()
        ids, mask, labels = padded_batch(examples)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += float((labels != -100).sum())
    return tokens / (time.perf_counter() - start)


# --quick: the embedded synthetic set (no bench to build), small steps, 2 timed after 1.
QUICK = ["data.bench=null", "data.synthetic=true", "data.synthetic_examples=200",
         "train.micro_batch_size=4", "train.global_batch_size=4"]


def main(argv=None) -> int:
    from optiml_engine.config import load_recipe

    parser = argparse.ArgumentParser(prog="optiml bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/demo.yaml",
                        help="the model and data to train (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed optimizer steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run of seconds: 2 steps after 1, with {' '.join(QUICK)}")
    parser.add_argument("overrides", nargs="*", help="section.key=value recipe overrides")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.overrides = 2, 1, [*QUICK, *args.overrides]
    recipe = load_recipe(args.recipe, [*args.overrides, "model.dropout=0.0",
                                       "checkpoint.dir=null", "logging.dir=null"])
    engine_tps, seen = engine_throughput(recipe, args.steps, args.warmup)
    steps_examples = [unpack(step) for step in seen]
    hf_tps = hf_throughput(recipe, steps_examples, args.warmup)
    per_step = sum(len(e) for e in steps_examples) / len(steps_examples)
    print(f"threads {torch.get_num_threads()} | model {recipe.model.hidden_size}d x "
          f"{recipe.model.num_layers} layers | {recipe.train.global_batch_size} packed samples of "
          f"{recipe.data.seq_length} tokens/step = {per_step:.0f} examples, padded per step for "
          f"transformers | {args.steps} timed steps after {args.warmup} warm-up")
    print(f"engine (packed):        {engine_tps:10.0f} target tokens/s")
    print(f"transformers (padded):  {hf_tps:10.0f} target tokens/s")
    print(f"ratio engine / transformers: {engine_tps / hf_tps:.2f}x")
    return 0
