"""Masked cross-entropy in Triton: one program per token, the vocabulary walked in chunks.

The forward kernel keeps a running max and sum of exponentials (fp32, whatever the logits dtype),
picks up the target logit on the way, and, for the single-device loss, walks the row a second
time to write the gradient softmax - onehot, scaled by the token's weight, in the logits dtype.
Tokens with weight 0 (not targets) read nothing and get a zero gradient row. With a vocab shard
(`vocab_start`), a target outside the shard contributes a target logit of 0 and no one-hot.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _write_grad(LOGITS, DLOGITS, row, stride_row, stride_grad, lse, local_target, weight, V,
                BLOCK_V: tl.constexpr):
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        ok = offs < V
        x = tl.load(LOGITS + row * stride_row + offs, mask=ok, other=float("-inf")).to(tl.float32)
        grad = tl.exp(x - lse) - tl.where(offs == local_target, 1.0, 0.0)
        tl.store(DLOGITS + row * stride_grad + offs, (grad * weight).to(DLOGITS.dtype.element_ty),
                 mask=ok)


@triton.jit
def _write_zeros(DLOGITS, row, stride_grad, V, BLOCK_V: tl.constexpr):
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        tl.store(DLOGITS + row * stride_grad + offs,
                 tl.zeros([BLOCK_V], dtype=DLOGITS.dtype.element_ty), mask=offs < V)


@triton.jit
def _ce_forward(LOGITS, TARGETS, WEIGHTS, LOSS, MAX, SUMEXP, TARGET_LOGIT, DLOGITS,
                stride_row, stride_grad, V, vocab_start,
                WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    weight = tl.load(WEIGHTS + row)
    if weight == 0.0:
        # Neutral stats (lse 0), so reductions over shards stay finite for non-target rows.
        tl.store(LOSS + row, 0.0)
        tl.store(MAX + row, 0.0)
        tl.store(SUMEXP + row, 1.0)
        tl.store(TARGET_LOGIT + row, 0.0)
        if WRITE_GRAD:
            _write_zeros(DLOGITS, row, stride_grad, V, BLOCK_V)
    else:
        local_target = tl.load(TARGETS + row).to(tl.int64) - vocab_start
        in_shard = (local_target >= 0) & (local_target < V)
        m = float("-inf")
        s = 0.0
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            x = tl.load(LOGITS + row * stride_row + offs, mask=offs < V,
                        other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        safe_target = tl.where(in_shard, local_target, 0)
        target_logit = tl.load(LOGITS + row * stride_row + safe_target).to(tl.float32)
        target_logit = tl.where(in_shard, target_logit, 0.0)
        lse = m + tl.log(s)
        tl.store(LOSS + row, (lse - target_logit) * weight)
        tl.store(MAX + row, m)
        tl.store(SUMEXP + row, s)
        tl.store(TARGET_LOGIT + row, target_logit)
        if WRITE_GRAD:
            _write_grad(LOGITS, DLOGITS, row, stride_row, stride_grad, lse, local_target, weight,
                        V, BLOCK_V)


@triton.jit
def _ce_grad(LOGITS, TARGETS, WEIGHTS, LSE, DLOGITS, stride_row, stride_grad, V, vocab_start,
             BLOCK_V: tl.constexpr):
    """Second phase of the vocab-parallel loss: the global log-sum-exp is known."""
    row = tl.program_id(0).to(tl.int64)
    weight = tl.load(WEIGHTS + row)
    if weight == 0.0:
        _write_zeros(DLOGITS, row, stride_grad, V, BLOCK_V)
    else:
        local_target = tl.load(TARGETS + row).to(tl.int64) - vocab_start
        _write_grad(LOGITS, DLOGITS, row, stride_row, stride_grad, tl.load(LSE + row),
                    local_target, weight, V, BLOCK_V)


def _block_v(vocab: int) -> int:
    cap = 256 if os.environ.get("TRITON_INTERPRET") == "1" else 4096
    return min(cap, triton.next_power_of_2(vocab))


def _rows(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.reshape(-1, logits.shape[-1])
    return logits if logits.stride(-1) == 1 else logits.contiguous()


def triton_cross_entropy_forward(logits, targets, weights, vocab_start: int = 0,
                                 write_grad: bool = True):
    """logits [N, V] (any float dtype), targets [N] int, weights [N] fp32.

    Returns (per-token weighted loss, max, sumexp, target_logit, dlogits or None); the
    stats are fp32 [N], and (0, 1, 0) where weight == 0 (those rows are never read).
    """
    logits = _rows(logits)
    n, vocab = logits.shape
    f32 = dict(dtype=torch.float32, device=logits.device)
    loss, mx, sumexp, target_logit = (torch.empty(n, **f32) for _ in range(4))
    dlogits = torch.empty_like(logits) if write_grad else None
    _ce_forward[(n,)](logits, targets.reshape(-1).contiguous(), weights.contiguous(), loss, mx,
                      sumexp, target_logit, dlogits if write_grad else loss,
                      logits.stride(0), dlogits.stride(0) if write_grad else 0, vocab, vocab_start,
                      WRITE_GRAD=write_grad, BLOCK_V=_block_v(vocab))
    return loss, mx, sumexp, target_logit, dlogits


def triton_cross_entropy_grad(logits, targets, weights, lse, vocab_start: int = 0):
    """dlogits = weight * (softmax - onehot) over one vocab shard, given the global lse [N]."""
    logits = _rows(logits)
    n, vocab = logits.shape
    dlogits = torch.empty_like(logits)
    _ce_grad[(n,)](logits, targets.reshape(-1).contiguous(), weights.contiguous(),
                   lse.contiguous(), dlogits, logits.stride(0), dlogits.stride(0), vocab,
                   vocab_start, BLOCK_V=_block_v(vocab))
    return dlogits
