"""How OPT is split for model parallelism: its tensor-parallel plan and its pipeline stages.

Tensor parallelism (Megatron-style, applied by `distributed.tensor_parallel.parallelize`):

    qkv_proj, fc1       column-parallel (qkv is head-major: a row slice = whole heads)
    out_proj, fc2       row-parallel
    embed_tokens        vocab-parallel (also the tied output layer)
    self_attn           on the per-rank RNG stream: its heads are sharded, so is its dropout

With sequence parallelism the positions' output is scattered along the sequence, the
LayerNorms (and 350M's project_in/out) act on sequence shards (their gradients are partial
sums), and every dropout acts on a shard, so it too runs on the per-rank stream.

Pipeline parallelism: stage s keeps a contiguous range of decoder layers (as `decoder.layers`,
a ModuleDict keyed by the global layer index, so parameter names do not depend on the layout).
The first stage keeps the embeddings; the last keeps the final LayerNorm and a copy of the
token embedding as the tied output layer (its gradient is summed with the first stage's over
the "embed" group). `decoder.has_embed` / `has_head` say which ends a stage holds, which is
all `OPTForCausalLM.hidden_states` needs to run any stage.
"""

from __future__ import annotations

from torch import nn

from optiml_engine.distributed.interleaved import chunk_layer_ranges
from optiml_engine.distributed.pipeline import stage_layer_range
from optiml_engine.distributed.tensor_parallel import parallelize
from optiml_engine.errors import OptimlError

TP_PLAN = {
    "decoder.embed_tokens": "vocab",
    "decoder.layers.*.self_attn.qkv_proj": "column",
    "decoder.layers.*.self_attn.out_proj": "row",
    "decoder.layers.*.fc1": "column",
    "decoder.layers.*.fc2": "row",
    "decoder.layers.*.self_attn": "tp_rng",
}
SP_PLAN = {
    "decoder.embed_positions": "sequence_scatter",
    "decoder.project_in": "sequence_parallel",
    "decoder.project_out": "sequence_parallel",
    "decoder.final_layer_norm": "sequence_parallel",
    "decoder.layers.*.self_attn_layer_norm": "sequence_parallel",
    "decoder.layers.*.final_layer_norm": "sequence_parallel",
    "decoder.dropout": "tp_rng",
    "decoder.layers.*.dropout": "tp_rng",
}


def check_divisible(cfg, tp: int, where: str = "recipe") -> None:
    for key, value in (("num_heads", cfg.num_heads), ("ffn_hidden_size", cfg.ffn_hidden_size),
                       ("vocab_size", cfg.vocab_size)):
        if value % tp:
            raise OptimlError(f"{where}: parallel.tp", f"model.{key}={value} cannot be split "
                              f"{tp} ways", f"choose a parallel.tp that divides model.{key}")


def apply_tensor_parallel(model, group, sequence_parallel: bool = False):
    """OPT's plan over `group`, in place; returns model."""
    from optiml_engine.distributed.mappings import group_size

    if group_size(group) > 1:
        check_divisible(model.config, group_size(group))
    plan = {**TP_PLAN, **(SP_PLAN if sequence_parallel else {})}
    return parallelize(model, plan, group, sequence_parallel)


def _keep_ends(dec, first: bool, last: bool) -> None:
    dec.has_embed, dec.has_head = first, last
    if not first:
        dec.embed_positions = None
        dec.project_in = None
    if not last:
        dec.final_layer_norm = None
        dec.project_out = None
    if not first and not last:
        dec.embed_tokens = None


def keep_stage(model, stage: int, pp: int):
    """Drop from `model` (in place) what stage `stage` of `pp` does not run; returns model."""
    dec = model.decoder
    layers = stage_layer_range(len(dec.layers), pp, stage)
    dec.layers = nn.ModuleDict({str(i): dec.layers[i] for i in layers})
    _keep_ends(dec, stage == 0, stage == pp - 1)
    return model


def keep_chunks(model, rank: int, pp: int, v: int) -> list[list[nn.Module]]:
    """Keep (in place) the layers of this rank's v interleaved chunks; returns each chunk's."""
    dec = model.decoder
    ranges = chunk_layer_ranges(len(dec.layers), pp, v, rank)
    dec.layers = nn.ModuleDict({str(i): dec.layers[i] for r in ranges for i in r})
    _keep_ends(dec, rank == 0, rank == pp - 1)
    return [[dec.layers[str(i)] for i in r] for r in ranges]


def decoder_layers(model) -> list[nn.Module]:
    layers = model.decoder.layers
    return list(layers.values()) if isinstance(layers, nn.ModuleDict) else list(layers)
