"""Packed attention example by example: the CPU path (and the GPU fallback) that never builds the
S x S mask and never computes the scores the mask would throw away.

Each example of a packed row is one run of `doc_ids` (segments.py). Runs are grouped by their
length rounded up to a bucket; a group is gathered into [n, L, H, D] and attends with SDPA's
built-in causal mask. Rounding up pads a run at its end, and a causal query never sees a later
key, so the padding changes nothing for real tokens (its own outputs are dropped). Work is then
the sum of L^2 over the examples instead of S^2 per row: about S / (mean example length) times
less for instruction data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from optiml_engine.kernels.segments import doc_ids_to_cu_seqlens

BUCKET = 32  # run lengths are rounded up to a multiple of this: fewer, fuller SDPA calls


def segment_attention(q, k, v, doc_ids, dropout_p: float = 0.0, scale=None):
    """q, k, v [B, S, H, D] (the same S: training, not KV-cache decoding); doc_ids [B, S]."""
    b, s, h, d = q.shape
    cu, _ = doc_ids_to_cu_seqlens(doc_ids)
    starts, lengths = cu[:-1].long(), (cu[1:] - cu[:-1]).long()
    total = b * s
    flat = [t.reshape(total, h, d) for t in (q, k, v)]
    padded = (lengths + BUCKET - 1) // BUCKET * BUCKET
    pieces, where = [], []
    for size in padded.unique().tolist():
        runs = (padded == size).nonzero().flatten()
        positions = starts[runs, None] + torch.arange(size, device=q.device)
        gathered = [t[positions.clamp_max(total - 1)].transpose(1, 2) for t in flat]
        out = F.scaled_dot_product_attention(*gathered, dropout_p=dropout_p, scale=scale,
                                             is_causal=True).transpose(1, 2)
        real = torch.arange(size, device=q.device) < lengths[runs, None]
        pieces.append(out[real])
        where.append(positions[real])
    order = torch.cat(where).argsort()
    return torch.cat(pieces)[order].reshape(b, s, h, d)
