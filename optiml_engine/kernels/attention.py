"""Packed-sequence causal attention: one entry point, backends chosen by the dispatcher.

Layout: q [B, Sq, H, D], k and v [B, Sk, H, D] (the layout of a projection's output).
Masking: query i may see key j iff j <= i + (Sk - Sq) (causal, aligned bottom-right so a KV cache
works) and, when document ids are given, the two tokens belong to the same example. Document
ids are per-row integers that restart nothing: each example of a packed row has its own id;
padding gets an id of its own so no row is ever fully masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_mask(q_len: int, doc_ids: torch.Tensor | None, kv_doc_ids: torch.Tensor | None,
                   k_len: int, device) -> torch.Tensor:
    """Boolean [B or 1, 1, Sq, Sk] mask, True where attention is allowed."""
    offset = k_len - q_len
    qi = torch.arange(q_len, device=device)[:, None]
    kj = torch.arange(k_len, device=device)[None, :]
    mask = (kj <= qi + offset)[None, None]
    if doc_ids is not None:
        kv_doc_ids = doc_ids if kv_doc_ids is None else kv_doc_ids
        mask = mask & (doc_ids[:, None, :, None] == kv_doc_ids[:, None, None, :])
    return mask


def sdpa_attention(q, k, v, doc_ids=None, kv_doc_ids=None, dropout_p=0.0, scale=None):
    """The pure-torch path (and the reference the kernels are tested against)."""
    mask = attention_mask(q.shape[1], doc_ids, kv_doc_ids, k.shape[1], q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask, dropout_p=dropout_p, scale=scale,
    )
    return out.transpose(1, 2)


def attention(q, k, v, doc_ids=None, kv_doc_ids=None, dropout_p=0.0, scale=None):
    """Causal attention that never crosses an example boundary; returns [B, Sq, H, D]."""
    return sdpa_attention(q, k, v, doc_ids, kv_doc_ids, dropout_p, scale)
