"""`optiml plan RECIPE --gpus N`: memory per GPU for every parallel layout T x P x D = N.

Estimates, not measurements: parameters counted exactly from the model config; bytes per
parameter as in mixed-precision Adam (16-bit weights and gradients, fp32 master weights and two
fp32 moments, the last three sharded over data-parallel ranks with ZeRO-1); activations per layer
from Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models")
with a flash-style attention (no S x S scores kept), and 1F1B keeping up to P micro-batches alive
on the first stage.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GIB = 2**30


def layer_params(h: int, ffn: int) -> int:
    return 4 * h * h + 4 * h + 2 * h * ffn + ffn + h + 4 * h  # qkv+out, fc1+fc2, two LayerNorms


def model_params(m) -> dict[str, int]:
    embed = m.vocab_size * m.word_embed_proj_dim + (m.max_position_embeddings + 2) * m.hidden_size
    if m.word_embed_proj_dim != m.hidden_size:
        embed += 2 * m.word_embed_proj_dim * m.hidden_size
    final_ln = 2 * m.hidden_size if m.pre_layer_norm else 0
    layers = m.num_layers * layer_params(m.hidden_size, m.ffn_hidden_size)
    return {"embedding": embed + final_ln, "layers": layers, "total": embed + final_ln + layers}


@dataclass
class Plan:
    tp: int
    pp: int
    dp: int
    params_per_gpu: int
    weights_gib: float
    optimizer_gib: float
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.optimizer_gib + self.activations_gib


def plan_layout(recipe, tp: int, pp: int, dp: int) -> Plan:
    m, t = recipe.model, recipe.train
    counts = model_params(m)
    # The first stage holds the embedding, the last its tied copy: count it on one busiest stage.
    per_gpu = (counts["layers"] // pp + counts["embedding"]) // tp
    weight_bytes = 2 if recipe.precision.dtype in ("bf16", "fp16") else 4
    weights = per_gpu * 2 * weight_bytes  # weights and their gradients
    optimizer = per_gpu * 12 / (dp if recipe.parallel.zero1 else 1)  # master + two moments
    s, b, h = recipe.data.seq_length, t.micro_batch_size, m.hidden_size
    if recipe.parallel.recompute == "full":
        per_layer = 2 * s * b * h
    elif recipe.parallel.sp:
        per_layer = s * b * h * 34 / tp
    else:
        per_layer = s * b * h * (10 + 24 / tp)
    micro_batches = t.global_batch_size // (t.micro_batch_size * dp)
    in_flight = min(pp, max(1, micro_batches))
    activations = per_layer * (m.num_layers // pp) * in_flight
    return Plan(tp, pp, dp, per_gpu, weights / GIB, optimizer / GIB, activations / GIB)


def layouts(recipe, gpus: int) -> list[Plan]:
    m = recipe.model
    plans = []
    for tp in (d for d in range(1, gpus + 1) if gpus % d == 0 and m.num_heads % d == 0):
        for pp in (d for d in range(1, gpus // tp + 1) if (gpus // tp) % d == 0):
            dp = gpus // (tp * pp)
            if m.num_layers % pp or recipe.train.global_batch_size % (recipe.train.micro_batch_size
                                                                      * dp):
                continue
            plans.append(plan_layout(recipe, tp, pp, dp))
    return plans


def main(argv: list[str]) -> int:
    from optiml_engine.config import load_recipe

    parser = argparse.ArgumentParser(prog="optiml plan", description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--gpus", type=int, required=True, help="GPUs in the whole job")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    counts = model_params(recipe.model)
    print(f"{counts['total'] / 1e9:.2f}B parameters; seq {recipe.data.seq_length}, micro-batch "
          f"{recipe.train.micro_batch_size}, global batch {recipe.train.global_batch_size}, "
          f"zero1={recipe.parallel.zero1}, sp={recipe.parallel.sp}, "
          f"recompute={recipe.parallel.recompute}")
    print(f"{'tp':>3} {'pp':>3} {'dp':>4} {'params/GPU':>12} {'weights+grads':>14} "
          f"{'optimizer':>10} {'activations':>12} {'total GiB':>10}  fits")
    budget = args.gpu_memory * 0.9  # leave room for the allocator, NCCL buffers and temporaries
    # Layouts that fit first; among them the least model parallelism (most data parallelism).
    for p in sorted(layouts(recipe, args.gpus),
                    key=lambda p: (p.total_gib > budget, p.tp * p.pp, p.total_gib)):
        fits = "yes" if p.total_gib <= budget else "no"
        print(f"{p.tp:>3} {p.pp:>3} {p.dp:>4} {p.params_per_gpu / 1e9:>11.2f}B "
              f"{p.weights_gib:>14.1f} {p.optimizer_gib:>10.1f} {p.activations_gib:>12.1f} "
              f"{p.total_gib:>10.1f}  {fits}")
    return 0
