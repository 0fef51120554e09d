"""Parameters of an OPT model: the whole model's, and exactly what one rank holds.

One rank's part is what model/parallelize.py leaves on it: the decoder layers of its pipeline
stage (distributed.pipeline.stage_layer_range; interleaved: its chunks), each with q/k/v/fc1
rows and out_proj/fc2 columns split over tensor-parallel ranks (their biases: column-parallel
split, row-parallel whole) and whole LayerNorms; the token embedding split by vocabulary on the
first stage and, tied, on the last; learned positions (and 350M's project_in) on the first stage;
the final LayerNorm (and project_out) on the last. `optiml train --dry-run` checks these counts
against the model the engine builds.
"""

from __future__ import annotations

from optiml_engine.distributed.interleaved import chunk_layer_ranges


def layer_params(h: int, ffn: int) -> int:
    return 4 * h * h + 4 * h + 2 * h * ffn + ffn + h + 4 * h  # qkv+out, fc1+fc2, two LayerNorms


def local_layer_params(h: int, ffn: int, tp: int) -> int:
    """One decoder layer's parameters on one tensor-parallel rank."""
    column = (3 * h * h + 3 * h + ffn * h + ffn) // tp  # qkv_proj, fc1 (weights and biases)
    row = (h * h + h * ffn) // tp + 2 * h  # out_proj, fc2 weights split; their biases whole
    return column + row + 4 * h  # + two LayerNorms


def model_params(m) -> dict[str, int]:
    embed = m.vocab_size * m.word_embed_proj_dim + (m.max_position_embeddings + 2) * m.hidden_size
    if m.word_embed_proj_dim != m.hidden_size:
        embed += 2 * m.word_embed_proj_dim * m.hidden_size
    final_ln = 2 * m.hidden_size if m.pre_layer_norm else 0
    layers = m.num_layers * layer_params(m.hidden_size, m.ffn_hidden_size)
    return {"embedding": embed + final_ln, "layers": layers, "total": embed + final_ln + layers}


def stage_layers(m, pp: int, virtual: int, pp_rank: int) -> int:
    return sum(len(r) for r in chunk_layer_ranges(m.num_layers, pp, virtual, pp_rank))


def local_params(m, tp: int, pp: int, pp_rank: int, virtual: int = 1) -> int:
    """Parameters held by a rank of pipeline rank `pp_rank` (any tensor-parallel rank: they
    all hold the same number)."""
    h, d = m.hidden_size, m.word_embed_proj_dim
    n = stage_layers(m, pp, virtual, pp_rank) * local_layer_params(h, m.ffn_hidden_size, tp)
    first, last = pp_rank == 0, pp_rank == pp - 1
    if first or last:
        n += m.vocab_size * d // tp  # the token embedding, or its tied copy on the last stage
    if first:
        n += (m.max_position_embeddings + 2) * h + (d * h if d != h else 0)
    if last:
        n += (2 * h if m.pre_layer_norm else 0) + (d * h if d != h else 0)
    return n


def largest_unit_params(m, tp: int, pp: int, pp_rank: int) -> int:
    """The largest block ZeRO-3 gathers at once on this rank: a decoder layer, or the token
    embedding where the stage holds it (one rank's tensor-parallel shard)."""
    unit = local_layer_params(m.hidden_size, m.ffn_hidden_size, tp)
    if pp_rank in (0, pp - 1):
        unit = max(unit, m.vocab_size * m.word_embed_proj_dim // tp)
    return unit
