"""Packed attention example by example: the CPU path (and the GPU fallback) that never builds the
S x S mask and never computes the scores the mask would throw away.

Each example of a packed row is one run of `doc_ids` (segments.py). Runs are grouped by their
length rounded up to a bucket; every group's slots are gathered at once (one index_select per
input), split into [n, L, H, D] per group, and each group attends with SDPA's built-in causal
mask; one more index_select reads the real tokens back in order. Rounding up pads a run at its
end, and a causal query never sees a later key, so the padding changes nothing for real tokens
(its own outputs are dropped). Work is then the sum of L^2 over the examples instead of S^2 per
row: about S / (mean example length) times less for instruction data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optiml_engine.kernels.segments import doc_ids_to_cu_seqlens

BUCKET = 32  # run lengths are rounded up to a multiple of this: fewer, fuller SDPA calls


def segment_attention(q, k, v, doc_ids, dropout_p: float = 0.0, scale=None):
    """q, k, v [B, S, H, D] (the same S: training, not KV-cache decoding); doc_ids [B, S]."""
    b, s, h, d = q.shape
    total = b * s
    positions, real, sizes, counts = _bucketed_positions(doc_ids, q.device)
    # One gather per input for all buckets, not one per bucket: each gather's backward is a
    # zeroed [B*S, H, D] buffer plus a scatter, which per bucket cost more than the SDPA calls
    # of short examples. Reads past the very last token (the last run's rounding) are clamped:
    # like all rounding they sit after the run's real tokens, so causal queries never see them.
    index = positions.clamp_max(total - 1)
    # Every token is the real slot of exactly one run (padding is a run too): `source` maps
    # tokens to their slot, so both directions are gathers and no backward scatters.
    source = torch.empty(total, dtype=torch.long, device=q.device)
    source[positions[real]] = real.nonzero().flatten()
    gathered = [_Gather.apply(t.reshape(total, h, d), index, source, None) for t in (q, k, v)]
    # split, not slices: a slice's backward zero-fills a full-size buffer per bucket, split's
    # is one cat of the buckets' gradients
    slots = [n * size for size, n in zip(sizes, counts, strict=True)]
    outs = []
    for size, n, *chunk in zip(sizes, counts, *(t.split(slots) for t in gathered), strict=True):
        chunk = [t.view(n, size, h, d).transpose(1, 2) for t in chunk]
        out = F.scaled_dot_product_attention(*chunk, dropout_p=dropout_p, scale=scale,
                                             is_causal=True)
        outs.append(out.transpose(1, 2).reshape(n * size, h, d))
    # Read the real slots back in token order; padded slots get a zero gradient.
    return _Gather.apply(torch.cat(outs), source, index, real).view(b, s, h, d)


class _Gather(torch.autograd.Function):
    """Rows `x[forward_index]`, whose gradient is `grad[backward_index]` (zeroed where
    `keep` is false) instead of a scatter-add into a zeroed buffer.

    Exact here because the two indices are inverse on the rows that carry a gradient: a slot
    past its run's end gets a zero output gradient (its output is never read back), so in
    SDPA's backward its query gradient is exactly 0, and it is a key that no real query of its
    run may see, so its key and value gradients are exactly 0: dropping them adds nothing."""

    @staticmethod
    def forward(ctx, x, forward_index, backward_index, keep):
        ctx.save_for_backward(backward_index, keep)
        return x.index_select(0, forward_index)

    @staticmethod
    def backward(ctx, grad):
        backward_index, keep = ctx.saved_tensors
        out = grad.index_select(0, backward_index)
        if keep is not None:
            out.masked_fill_(~keep[:, None, None], 0.0)
        return out, None, None, None


def _bucketed_positions(doc_ids, device):
    """For the runs of `doc_ids` grouped by their length rounded up to BUCKET (shortest bucket
    first): the flat token position of every padded slot, whether the slot is a real token,
    and each bucket's padded length and number of runs (host ints, for the views)."""
    cu, _ = doc_ids_to_cu_seqlens(doc_ids)
    starts, lengths = cu[:-1].long(), (cu[1:] - cu[:-1]).long()
    padded = (lengths + BUCKET - 1) // BUCKET * BUCKET
    sizes, bucket_of = padded.unique(return_inverse=True)
    runs = bucket_of.argsort(stable=True)
    span = padded[runs]
    first = torch.cumsum(span, 0) - span
    offset = torch.arange(int(span.sum()), device=device) - first.repeat_interleave(span)
    positions = starts[runs].repeat_interleave(span) + offset
    real = offset < lengths[runs].repeat_interleave(span)
    counts = torch.bincount(bucket_of, minlength=len(sizes))
    return positions, real, sizes.tolist(), counts.tolist()
