"""Flash-attention forward and backward for packed rows, in Triton.

Tiled online softmax: no S x S matrix is ever stored; the backward pass recomputes the
probabilities from the saved log-sum-exp. Query i sees key j iff seg_start[i] <= j <= i (causal
inside its own example); a query tile starts its key loop at the first run start among its rows,
so key tiles of earlier examples and tiles above the diagonal are never visited. Head dims that
are not powers of two (80, 96) are padded to the next power of two with masked loads.

Attention dropout (FlashAttention-2 style) acts on the normalised probabilities: out = (P * Z) V
with Z = keep / (1 - p), the log-sum-exp unchanged. The keep bit of (row bh, query i, key j) is a
pure function of a seed and (bh, i, j) (`_keep`), so the backward kernels recompute the forward's
mask instead of storing it. The seed is drawn from torch's generator of q's device, so
`torch.manual_seed` and recomputation that restores the RNG state replay the same mask. Without
dropout (HAS_DROPOUT false) none of that code is compiled.

Batch and head offsets (b * stride_b + h * stride_h, bh * S) are int64: a packed [B, S, 3, H, D]
projection passes 2**31 elements long before one of its batch rows does, and offsets inside a
row (token * stride_s + d) stay int32.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from optiml_engine.kernels import attention_configs as tuning

LOG2E = 1.4426950408889634
MAX_DROPOUT_SEQ = 46340  # largest S with S * S < 2**31


@triton.jit
def _dot(a, b, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    # Triton 3.9's CPU interpreter multiplies the raw bits of bf16 operands; upcasting the
    # (exactly representable) bf16 values to fp32 gives the product the GPU computes.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PREC)


@triton.jit
def _rows(X, base, offs, row_stride, offs_d, mask):
    """The [rows, head dim] tile of X at `offs` (0 where masked): q, k, v or dO of one head."""
    return tl.load(X + base + offs[:, None] * row_stride + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _keep(seed, bh, qi, kj, S, dropout_p):
    """Keep bits for queries qi x keys kj (broadcastable int32 blocks) of row bh.

    Philox counters (i * S + j, bh, 0, 0) under key `seed`: the stream `tl.rand` gives for the
    64-bit offset bh * 2**32 + i * S + j, without 64-bit arithmetic on the tile.
    """
    c0 = qi * S + kj
    zero = tl.zeros_like(c0)
    bits, _, _, _ = tl.philox(seed, c0, zero + bh, zero, zero)
    return tl.uint_to_uniform_float(bits) >= dropout_p


@triton.jit
def _keep_mask_kernel(SEED, KEEP, S, dropout_p, BLOCK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    seed = tl.load(SEED)
    offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
    for n0 in range(0, S, BLOCK):
        offs_n = n0 + tl.arange(0, BLOCK)
        keep = _keep(seed, pid_bh, offs_m[:, None], offs_n[None, :], S, dropout_p)
        ok = (offs_m[:, None] < S) & (offs_n[None, :] < S)
        ptrs = KEEP + pid_bh.to(tl.int64) * S * S + offs_m[:, None] * S + offs_n[None, :]
        tl.store(ptrs, keep.to(tl.int8), mask=ok)


@triton.jit
def _key_range(SEG_START, b, S, pid_m, offs_m, row_ok, HAS_DOCS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For a query tile: each row's example start, and the key range [lo, hi) worth visiting
    (from the tile-aligned first start among its rows up to the diagonal)."""
    if HAS_DOCS:
        start = tl.load(SEG_START + b * S + offs_m, mask=row_ok, other=S)
        lo = (tl.min(start, axis=0) // BLOCK_N) * BLOCK_N
    else:
        start = tl.zeros([BLOCK_M], dtype=tl.int32)
        lo = 0
    hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    return start, lo, hi


@triton.jit
def _attn_fwd(Q, K, V, OUT, LSE, SEG_START, SEED,
              sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
              H, S, D, qk_scale, dropout_p, drop_scale,
              HAS_DOCS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              D_PAD: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # int64 before any stride product: b * sqb passes 2**31 once B * S * 3 * H * D does.
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < S
    d_ok = offs_d < D
    q = _rows(Q, b * sqb + h * sqh, offs_m, sqs, offs_d, row_ok[:, None] & d_ok[None, :])
    start, lo, hi = _key_range(SEG_START, b, S, pid_m, offs_m, row_ok, HAS_DOCS, BLOCK_M, BLOCK_N)
    if HAS_DROPOUT:
        seed = tl.load(SEED)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < S
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = _rows(K, b * skb + h * skh, offs_n, sks, offs_d, kv_mask)
        s = _dot(q, tl.trans(k), DOT_PREC, UPCAST) * qk_scale
        valid = ((offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] >= start[:, None])
                 & col_ok[None, :])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with nothing visible yet keeps m = -inf; subtracting 0 keeps exp2 finite.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = _rows(V, b * svb + h * svh, offs_n, svs, offs_d, kv_mask)
        if HAS_DROPOUT:  # l_i sums the undropped p: dropout acts after normalisation
            keep = _keep(seed, pid_bh, offs_m[:, None], offs_n[None, :], S, dropout_p)
            p = tl.where(keep, p, 0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PREC, UPCAST)
        m_i = m_new

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    if HAS_DROPOUT:
        out = out * drop_scale
    # +inf log-sum-exp makes the backward's recomputed probabilities exactly 0 for empty rows.
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("inf"))
    tl.store(OUT + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh * S + offs_m, lse, mask=row_ok)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, SEG_END, SEED,
                   sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
                   H, S, D, qk_scale, sm_scale, dropout_p, drop_scale,
                   HAS_DOCS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   D_PAD: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """One key tile: walk the query tiles that can see it (from the diagonal to its run's end)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # int64 before any stride product: b * sqb passes 2**31 once B * S * 3 * H * D does.
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    col_ok = offs_n < S
    d_ok = offs_d < D
    kv_mask = col_ok[:, None] & d_ok[None, :]
    k = _rows(K, b * skb + h * skh, offs_n, sks, offs_d, kv_mask)
    v = _rows(V, b * svb + h * svh, offs_n, svs, offs_d, kv_mask)
    if HAS_DOCS:
        end = tl.load(SEG_END + b * S + offs_n, mask=col_ok, other=-1)
        hi = tl.max(end, axis=0) + 1
    else:
        end = tl.full([BLOCK_N], S - 1, dtype=tl.int32)
        hi = S
    lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    if HAS_DROPOUT:
        seed = tl.load(SEED)

    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        row_ok = offs_m < S
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = _rows(Q, b * sqb + h * sqh, offs_m, sqs, offs_d, q_mask)
        do = _rows(DO, b * sob + h * soh, offs_m, sos, offs_d, q_mask)
        lse = tl.load(LSE + bh * S + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + bh * S + offs_m, mask=row_ok, other=0.0)
        s_t = _dot(k, tl.trans(q), DOT_PREC, UPCAST) * qk_scale
        valid = ((offs_m[None, :] >= offs_n[:, None]) & (offs_m[None, :] <= end[:, None])
                 & row_ok[None, :])
        p_t = tl.where(valid, tl.exp2(s_t - lse[None, :]), 0.0)
        dp_t = _dot(v, tl.trans(do), DOT_PREC, UPCAST)
        pz_t = p_t
        if HAS_DROPOUT:
            # dV = (P Z)^T dO and dS = P (Z dP - delta); the tile is transposed: [keys, queries].
            keep_t = _keep(seed, pid_bh, offs_m[None, :], offs_n[:, None], S, dropout_p)
            z_t = tl.where(keep_t, drop_scale, 0.0)
            pz_t = p_t * z_t
            dp_t = dp_t * z_t
        dv += _dot(pz_t.to(do.dtype), do, DOT_PREC, UPCAST)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, DOT_PREC, UPCAST)

    out_offs = b * sob + h * soh + offs_n[:, None] * sos + offs_d[None, :]
    tl.store(DK + out_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, SEG_START, SEED,
                 sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
                 H, S, D, qk_scale, sm_scale, dropout_p, drop_scale,
                 HAS_DOCS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 D_PAD: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    """One query tile: the same key range as the forward pass."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # int64 before any stride product: b * sqb passes 2**31 once B * S * 3 * H * D does.
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < S
    d_ok = offs_d < D
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = _rows(Q, b * sqb + h * sqh, offs_m, sqs, offs_d, q_mask)
    do = _rows(DO, b * sob + h * soh, offs_m, sos, offs_d, q_mask)
    lse = tl.load(LSE + bh * S + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * S + offs_m, mask=row_ok, other=0.0)
    start, lo, hi = _key_range(SEG_START, b, S, pid_m, offs_m, row_ok, HAS_DOCS, BLOCK_M, BLOCK_N)
    if HAS_DROPOUT:
        seed = tl.load(SEED)

    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < S
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = _rows(K, b * skb + h * skh, offs_n, sks, offs_d, kv_mask)
        v = _rows(V, b * svb + h * svh, offs_n, svs, offs_d, kv_mask)
        s = _dot(q, tl.trans(k), DOT_PREC, UPCAST) * qk_scale
        valid = ((offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] >= start[:, None])
                 & col_ok[None, :])
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), DOT_PREC, UPCAST)
        if HAS_DROPOUT:
            keep = _keep(seed, pid_bh, offs_m[:, None], offs_n[None, :], S, dropout_p)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, DOT_PREC, UPCAST)
    tl.store(DQ + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


# Autotuned entry points (attention_configs.py); the raw kernels serve explicit tile sizes.
_attn_fwd_tuned = triton.autotune(tuning.FORWARD, key=tuning.TUNE_KEY)(_attn_fwd)
_attn_bwd_dkdv_tuned = triton.autotune(tuning.BACKWARD_DKDV, key=tuning.TUNE_KEY)(_attn_bwd_dkdv)
_attn_bwd_dq_tuned = triton.autotune(tuning.BACKWARD_DQ, key=tuning.TUNE_KEY)(_attn_bwd_dq)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _launch(raw, tuned, blocks, rows_per_program: str, s: int, bh: int, args, meta):
    """Run `raw` with the caller's (BLOCK_M, BLOCK_N), or the autotuned kernel when None."""
    if blocks is None:
        tuned[lambda cfg: (triton.cdiv(s, cfg[rows_per_program]), bh)](*args, **meta)
    else:
        bm, bn = blocks
        tile = bm if rows_per_program == "BLOCK_M" else bn
        raw[(triton.cdiv(s, tile), bh)](*args, BLOCK_M=bm, BLOCK_N=bn, **meta)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def draw_dropout_seed(device) -> torch.Tensor:
    """The mask seed: one int64 from torch's generator of `device` (what `manual_seed` sets)."""
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def _dropout_args(dropout_p: float, seq_len: int) -> tuple[float, float]:
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if seq_len > MAX_DROPOUT_SEQ:
        raise ValueError(f"attention dropout needs rows of at most {MAX_DROPOUT_SEQ} tokens "
                         f"(the Philox counter i * S + j is 32-bit), got {seq_len}")
    return dropout_p, (1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0)


def dropout_keep_mask(seed, b: int, h: int, s: int, dropout_p: float, device) -> torch.Tensor:
    """The [B, H, S, S] keep mask the kernels use for `seed` (for tests and debugging)."""
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(1)
    p, _ = _dropout_args(dropout_p, s)
    keep = torch.empty(b, h, s, s, dtype=torch.int8, device=device)
    block = 64
    _keep_mask_kernel[(triton.cdiv(s, block), b * h)](seed, keep, s, p, BLOCK=block)
    return keep.bool()


class TritonAttention(torch.autograd.Function):
    """Causal packed-row attention; q, k, v [B, S, H, D] with the last dim contiguous."""

    @staticmethod
    def forward(ctx, q, k, v, seg_start, seg_end, scale, blocks, dropout_p, seed):
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        b, s, h, d = q.shape
        d_pad = max(16, triton.next_power_of_2(d))
        out = torch.empty(b, s, h, d, dtype=q.dtype, device=q.device)
        lse = torch.empty(b * h, s, dtype=torch.float32, device=q.device)
        has_docs = seg_start is not None
        has_dropout = seed is not None
        drop = _dropout_args(dropout_p, s) if has_dropout else (0.0, 1.0)
        prec = "ieee" if q.dtype == torch.float32 else "tf32"
        upcast = _interpreting() and q.dtype == torch.bfloat16
        meta = dict(HAS_DOCS=has_docs, HAS_DROPOUT=has_dropout, D_PAD=d_pad, DOT_PREC=prec,
                    UPCAST=upcast)
        args = (q, k, v, out, lse, seg_start if has_docs else lse, seed if has_dropout else lse,
                *_strides(q), *_strides(k), *_strides(v), *_strides(out),
                h, s, d, scale * LOG2E, *drop)
        _launch(_attn_fwd, _attn_fwd_tuned, blocks, "BLOCK_M", s, b * h, args, meta)
        ctx.save_for_backward(q, k, v, out, lse, seg_start, seg_end, seed)
        ctx.cfg = (scale, blocks, drop, meta)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, seg_start, seg_end, seed = ctx.saved_tensors
        scale, blocks, drop, meta = ctx.cfg
        b, s, h, d = q.shape
        do = grad_out.contiguous()
        # delta_i = sum_d dO_i * O_i: the softmax-backward row term, [B*H, S] like lse. With
        # dropout O is the dropped-out output, which is what the term needs.
        delta = (do.float() * out.float()).sum(-1).permute(0, 2, 1).reshape(b * h, s).contiguous()
        dq, dk, dv = (torch.empty_like(out) for _ in range(3))
        seed_arg = seed if meta["HAS_DROPOUT"] else lse
        has_docs = meta["HAS_DOCS"]
        common = (*_strides(q), *_strides(k), *_strides(v), *_strides(do),
                  h, s, d, scale * LOG2E, scale, *drop)
        _launch(_attn_bwd_dkdv, _attn_bwd_dkdv_tuned, blocks, "BLOCK_N", s, b * h,
                (q, k, v, do, dk, dv, lse, delta, seg_end if has_docs else lse, seed_arg,
                 *common), meta)
        _launch(_attn_bwd_dq, _attn_bwd_dq_tuned, blocks, "BLOCK_M", s, b * h,
                (q, k, v, do, dq, lse, delta, seg_start if has_docs else lse, seed_arg,
                 *common), meta)
        return dq, dk, dv, None, None, None, None, None, None


def triton_attention(q, k, v, seg_start=None, seg_end=None, scale=None,
                     block_m: int | None = None, block_n: int | None = None,
                     dropout_p: float = 0.0, seed: torch.Tensor | None = None):
    """Self-attention (Sq == Sk) over packed rows; seg_start/seg_end from `segment_bounds`.

    Tile sizes are autotuned (attention_configs.py) unless block_m / block_n are given.
    dropout_p > 0 drops attention probabilities; the mask seed is drawn with
    `draw_dropout_seed` unless given. dropout_p == 0 runs the kernels without dropout code and
    draws nothing from the generator.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if dropout_p == 0.0:
        seed = None
    elif seed is None:
        seed = draw_dropout_seed(q.device)
    blocks = None if block_m is None and block_n is None else (block_m or 32, block_n or 32)
    return TritonAttention.apply(q, k, v, seg_start, seg_end, scale, blocks, dropout_p, seed)
