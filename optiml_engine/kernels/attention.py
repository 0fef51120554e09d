"""Packed-sequence causal attention: one entry point, backends chosen by the dispatcher.

Layout: q [B, Sq, H, D], k and v [B, Sk, H, D] (the layout of a projection's output).
Masking: query i may see key j iff j <= i + (Sk - Sq) (causal, aligned bottom-right so a KV cache
works) and, when document ids are given, the two tokens belong to the same example. Document
ids are per-row integers that restart nothing: each example of a packed row has its own id;
padding gets an id of its own so no row is ever fully masked. Each id forms one contiguous run
in its row (see `segments.py`).

Backends: `segments` (SDPA example by example, `segment_attention.py`: the CPU path for long
packed rows), `sdpa` (torch SDPA with an explicit boolean mask; short rows on the CPU, and the
reference), `triton` (our flash-attention kernel, `triton_attention.py`), `flash_attn` (the
package's varlen function, when installed). Cases a backend cannot run go to SDPA, and that is
logged once. `auto` on the CPU takes `segments` for rows of at least SEGMENTS_MIN_SEQ tokens and
the masked SDPA below (measured: 0.5x at 256 tokens, 1.2-1.3x at 1024, 2.6x at 2048 tokens per
row; docs/benchmarks.md).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from optiml_engine.kernels import dispatch
from optiml_engine.kernels.segments import (
    cu_seqlens_to_doc_ids,
    doc_ids_to_cu_seqlens,
    segment_bounds,
)

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SEGMENTS_MIN_SEQ = 1024  # below it, one masked SDPA call beats gathering the examples
TRITON_MAX_HEAD_DIM = 128


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


_bounds_cache: dict = {"key": None, "value": None}


def _cached_segment_bounds(doc_ids: torch.Tensor):
    """Every layer of a forward pass sees the same doc_ids tensor: compute its bounds once."""
    key = _bounds_cache["key"]
    if key is not None and key[0]() is doc_ids and key[1] == doc_ids._version:
        return _bounds_cache["value"]
    value = segment_bounds(doc_ids)
    _bounds_cache.update(key=(weakref.ref(doc_ids), doc_ids._version), value=value)
    return value


def _triton_unsupported(q, k, kv_doc_ids, doc_ids, dropout_p) -> str | None:
    from optiml_engine.kernels.triton_attention import MAX_DROPOUT_SEQ

    if q.shape[1] != k.shape[1]:
        return "query and key lengths differ (KV-cache decoding)"
    if kv_doc_ids is not None and kv_doc_ids is not doc_ids:
        return "separate key document ids"
    if dropout_p > 0.0 and q.shape[1] > MAX_DROPOUT_SEQ:
        return f"attention dropout on rows longer than {MAX_DROPOUT_SEQ} tokens"
    if q.dtype not in TRITON_DTYPES:
        return f"dtype {q.dtype}"
    if q.shape[-1] > TRITON_MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {TRITON_MAX_HEAD_DIM}"
    return None


def _flash_attn_unsupported(q, k, kv_doc_ids, doc_ids) -> str | None:
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"dtype {q.dtype} (flash_attn takes fp16/bf16)"
    if doc_ids is not None and (q.shape[1] != k.shape[1]
                                or (kv_doc_ids is not None and kv_doc_ids is not doc_ids)):
        return "packed rows with a KV cache"
    return None


def _flash_attn(q, k, v, doc_ids, dropout_p, scale):
    import flash_attn

    if doc_ids is None:
        return flash_attn.flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=scale,
                                          causal=True)
    b, s, h, d = q.shape
    cu, longest = doc_ids_to_cu_seqlens(doc_ids)
    flat = [t.reshape(b * s, h, d) for t in (q, k, v)]
    out = flash_attn.flash_attn_varlen_func(*flat, cu, cu, longest, longest, dropout_p=dropout_p,
                                            softmax_scale=scale, causal=True)
    return out.reshape(b, s, h, d)


def attention(q, k, v, doc_ids=None, kv_doc_ids=None, dropout_p=0.0, scale=None, *,
              cu_seqlens=None, backend: str | None = None):
    """Causal attention that never crosses an example boundary; returns [B, Sq, H, D].

    `cu_seqlens` (cumulative example lengths of a single packed row, B == 1) may replace
    `doc_ids`. `backend`: auto | triton | sdpa | flash_attn; None takes the recipe's choice
    (`dispatch.configure`). `scale` defaults to 1/sqrt(head_dim), as in OPT.
    """
    if cu_seqlens is not None:
        if q.shape[0] != 1:
            raise ValueError("cu_seqlens describes one packed row; use doc_ids for B > 1")
        doc_ids = cu_seqlens_to_doc_ids(cu_seqlens, q.shape[1])
    requested = dispatch.requested_backend("attention", backend)
    chosen = dispatch.resolve("attention", requested, q.device)
    if chosen == "segments":
        same_keys = q.shape[1] == k.shape[1] and (kv_doc_ids is None or kv_doc_ids is doc_ids)
        long_rows = requested == "segments" or q.shape[1] >= SEGMENTS_MIN_SEQ
        if doc_ids is not None and same_keys and long_rows:
            from optiml_engine.kernels.segment_attention import segment_attention

            return segment_attention(q, k, v, doc_ids, dropout_p, scale)
        return sdpa_attention(q, k, v, doc_ids, kv_doc_ids, dropout_p, scale)
    if chosen == "flash_attn":
        why = _flash_attn_unsupported(q, k, kv_doc_ids, doc_ids)
        if why is None:
            return _flash_attn(q, k, v, doc_ids, dropout_p, scale)
    elif chosen == "triton":
        why = _triton_unsupported(q, k, kv_doc_ids, doc_ids, dropout_p)
        if why is None:
            from optiml_engine.kernels.triton_attention import triton_attention

            start, end = (None, None) if doc_ids is None else _cached_segment_bounds(doc_ids)
            return triton_attention(q, k, v, start, end, scale, dropout_p=dropout_p)
    else:
        why = None
    if why is not None:
        dispatch.log_once(("attention-fallback", chosen, why),
                          f"attention: {chosen} does not handle {why}; using sdpa for those calls")
    return sdpa_attention(q, k, v, doc_ids, kv_doc_ids, dropout_p, scale)
