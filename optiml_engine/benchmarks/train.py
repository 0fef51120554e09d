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
    from optiml_engine.training.trainer import Trainer

    trainer = Trainer(recipe, verbose=False)
    trainer.model.train()
    for _ in range(warmup):
        trainer.train_step()
    tokens, start = 0.0, time.perf_counter()
    for _ in range(steps):
        tokens += trainer.train_step()["target_tokens"]
    return tokens / (time.perf_counter() - start), trainer


def hf_throughput(recipe, examples, batch_size: int, steps: int, warmup: int) -> float:
    import transformers

    m = recipe.model
    torch.manual_seed(recipe.train.seed)
    model = transformers.OPTForCausalLM(
        transformers.OPTConfig(
            vocab_size=m.vocab_size,
            hidden_size=m.hidden_size,
            num_hidden_layers=m.num_layers,
            num_attention_heads=m.num_heads,
            ffn_dim=m.ffn_hidden_size,
            max_position_embeddings=m.max_position_embeddings,
            word_embed_proj_dim=m.word_embed_proj_dim,
            do_layer_norm_before=m.pre_layer_norm,
            dropout=m.dropout,
        )
    ).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr, foreach=True)
    seq = recipe.data.seq_length

    def batch(i):
        rows = [examples[(i * batch_size + j) % len(examples)] for j in range(batch_size)]
        rows = [([2, *s, *t, 2][-seq:], len(t) + 1) for s, t in rows]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((batch_size, width), 1)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for r, (tokens, n_target) in enumerate(rows):
            ids[r, : len(tokens)] = torch.tensor(tokens)
            mask[r, : len(tokens)] = 1
            labels[r, len(tokens) - n_target : len(tokens)] = ids[
                r, len(tokens) - n_target : len(tokens)
            ]
        return ids, mask, labels

    tokens, start = 0.0, None
    for i in range(warmup + steps):
        if i == warmup:
            tokens, start = 0.0, time.perf_counter()
        ids, mask, labels = batch(i)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += float((labels[:, 1:] != -100).sum())
    return tokens / (time.perf_counter() - start)


def main(argv=None) -> int:
    from optiml_engine.config import load_recipe
    from optiml_engine.data.dataset import tokenize_pairs, training_text

    parser = argparse.ArgumentParser(prog="optiml bench train", description=__doc__)
    parser.add_argument("--recipe", default="recipes/demo.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, [*args.overrides, "model.dropout=0.0"])
    engine_tps, trainer = engine_throughput(recipe, args.steps, args.warmup)
    examples = tokenize_pairs(training_text(recipe), trainer.tokenizer)
    per_step = trainer.samples.num_examples * recipe.train.global_batch_size // len(trainer.samples)
    hf_tps = hf_throughput(recipe, examples, max(1, per_step), args.steps, args.warmup)
    print(
        f"threads {torch.get_num_threads()} | model {recipe.model.hidden_size}d x "
        f"{recipe.model.num_layers} layers | seq {recipe.data.seq_length} | "
        f"{recipe.train.global_batch_size} packed samples/step vs {per_step} padded examples/step"
    )
    print(f"engine (packed):        {engine_tps:10.0f} target tokens/s")
    print(f"transformers (padded):  {hf_tps:10.0f} target tokens/s")
    print(f"ratio engine / transformers: {engine_tps / hf_tps:.2f}x")
    return 0
