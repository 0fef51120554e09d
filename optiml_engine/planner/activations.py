"""Activation memory: the bytes autograd keeps for backward, per micro-batch and pipeline stage.

Counted tensor by tensor from what this engine's ops save (tests/planner/test_activations.py
measures them with saved-tensor hooks on a tiny model for every layout up to 8 ranks). Per
pre-LN decoder layer, with T = s * b tokens of a micro-batch, t = tp and r = t under sequence
parallelism (else 1), w bytes per element of the compute dtype:

    each LayerNorm        its input T h w / r, mean and rstd 2 T stat / r
    qkv_proj input        the LayerNorm's output, T h w; with SP the GATHERED full sequence
    attention (flash)     q, k, v (one storage) 3 T h w / t, output T h w / t (also out_proj's
                          input), log-sum-exp b (a / t) s 4
    fc1 input             T h w (gathered with SP, like qkv)
    ReLU output           T f w / t (also fc2's input)
    two dropout masks     T h mask / r each (when model.dropout > 0)

that is T h (4 + 8 / t) w for t = 1 without SP; Korthikanti et al. 2022 count 34 T h with
GeLU, unfused attention and SP saving only shards, which this engine does not do. The first
stage adds the ids of its embeddings (tokens, positions: int64; with tp > 1 the vocabulary shard's
out-of-range mask) and the embedding dropout mask; the last stage the final LayerNorm and the
chunked loss's saved gradients: d(hidden) T d w (full sequence) and d(embedding shard) V d / t in
fp32 (kernels/linear_cross_entropy.py computes both in its forward).

With `parallel.recompute: full` a layer keeps only its input (T h w / r), the stage its
micro-batch's document ids (int64, T 8, one tensor for all its layers), and one layer is rebuilt
at a time in backward, which adds one layer's set above once, not per micro-batch.

Element sizes differ by device: on CUDA dropout masks are bool (1 byte) and LayerNorm statistics
fp32; torch's CPU kernels keep both in the input dtype. `loss_chunk_tokens: 0` (full logits) is
modelled as the hidden input plus fp32 logit gradients T V / t 4, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ElementSizes:
    w: int  # compute dtype
    mask: int  # dropout mask
    stat: int  # LayerNorm mean / rstd

    @classmethod
    def of(cls, w: int, device: str = "cuda") -> ElementSizes:
        return cls(w, 1, 4) if device == "cuda" else cls(w, w, w)


@dataclass(frozen=True)
class Shape:
    """One micro-batch on one rank: sequence s, micro-batch b, and the model's widths."""

    s: int
    b: int
    h: int
    ffn: int
    heads: int
    vocab: int
    embed_dim: int
    tp: int
    sp: bool
    dropout: bool

    @property
    def tokens(self) -> int:
        return self.s * self.b

    @property
    def seq_split(self) -> int:
        return self.tp if self.sp and self.tp > 1 else 1


def layer_bytes(x: Shape, e: ElementSizes) -> int:
    """What one decoder layer keeps for backward without recomputation."""
    T, h, t, r = x.tokens, x.h, x.tp, x.seq_split
    layer_norm = T * h * e.w // r + 2 * T * e.stat // r
    attention = 4 * T * h * e.w // t + x.b * (x.heads // t) * x.s * 4
    masks = 2 * T * h * e.mask // r if x.dropout else 0
    return 2 * layer_norm + 2 * T * h * e.w + attention + T * x.ffn * e.w // t + masks


def recomputed_layer_bytes(x: Shape, e: ElementSizes) -> int:
    """What a layer under full recomputation keeps: its input."""
    return x.tokens * x.h * e.w // x.seq_split


def embed_bytes(x: Shape, e: ElementSizes) -> int:
    T = x.tokens
    ids = 2 * T * 8 + (T if x.tp > 1 else 0)  # token and position ids; the shard's id mask
    return ids + (T * x.h * e.mask // x.seq_split if x.dropout else 0)


def head_bytes(x: Shape, e: ElementSizes, chunk_tokens: int) -> int:
    T, r = x.tokens, x.seq_split
    final_norm = T * x.h * e.w // r + 2 * T * e.stat // r
    if chunk_tokens:
        loss = T * x.embed_dim * e.w + x.vocab * x.embed_dim * 4 // x.tp
    else:
        loss = T * x.embed_dim * e.w + T * x.vocab * 4 // x.tp
    return final_norm + loss


def micro_batch_bytes(x: Shape, e: ElementSizes, layers: int, first: bool, last: bool,
                      recompute: str, chunk_tokens: int) -> int:
    """Bytes one micro-batch leaves saved on a stage of `layers` layers until its backward."""
    if recompute == "full":  # + the document ids the checkpoints are handed (one tensor)
        total = layers * recomputed_layer_bytes(x, e) + x.tokens * 8
    else:
        total = layers * layer_bytes(x, e)
    if first:
        total += embed_bytes(x, e)
    if last:
        total += head_bytes(x, e, chunk_tokens)
    return total


def in_flight(pp: int, pp_rank: int, micro_batches: int) -> int:
    """Micro-batches whose activations are alive at once at the peak of 1F1B: a stage runs
    pp - rank forwards before its first backward (distributed/pipeline.py)."""
    return min(pp - pp_rank, micro_batches)


def chunk_sizes(x: Shape, e: ElementSizes, m, pp: int, pp_rank: int, virtual: int,
                recompute: str, chunk_tokens: int) -> list[int]:
    """Bytes one micro-batch leaves on each of this rank's model chunks (one without
    interleaving): chunk c holds global stage c pp + rank."""
    from optiml_engine.distributed.interleaved import chunk_layer_ranges

    ranges = chunk_layer_ranges(m.num_layers, pp, virtual, pp_rank)
    return [micro_batch_bytes(x, e, len(r), pp_rank == 0 and c == 0,
                              pp_rank == pp - 1 and c == virtual - 1, recompute, chunk_tokens)
            for c, r in enumerate(ranges)]


def peak_bytes(x: Shape, e: ElementSizes, m, pp: int, pp_rank: int, micro_batches: int,
               virtual: int, recompute: str, chunk_tokens: int) -> int:
    """Activation peak of a rank over a step: the micro-batches (chunks) in flight at the
    schedule's busiest point, plus under recomputation the one layer being rebuilt. The
    interleaved schedule is walked task by task (distributed/interleaved.py's own order)."""
    sizes = chunk_sizes(x, e, m, pp, pp_rank, virtual, recompute, chunk_tokens)
    if virtual == 1:
        peak = in_flight(pp, pp_rank, micro_batches) * sizes[0]
    else:
        from optiml_engine.distributed.interleaved import interleaved_order

        live = peak = 0
        for kind, chunk, _ in interleaved_order(micro_batches, pp, virtual, pp_rank):
            live += sizes[chunk] if kind == "F" else -sizes[chunk]
            peak = max(peak, live)
    if recompute == "full":
        peak += layer_bytes(x, e)
    return int(peak)
