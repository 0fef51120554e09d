"""Multi-tensor mixed-precision AdamW in Triton: two launches for any number of tensors.

Tensors are reached through tables of their addresses (int64) and split into BLOCK-sized chunks;
program i handles chunk i of the table (tensor index, offset), so one launch covers the whole model
as apex's multi_tensor_apply does. Launch 1 raises a found-inf flag if any unscaled gradient is
not finite; launch 2 reads the flag on the device and does nothing if it is set (no host sync).
All tensors of one launch share the model-param and grad dtypes; master weights and moments are
fp32. Without master weights the fp32 params are their own masters. All tensors contiguous.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _non_finite_check(CHUNK_TENSOR, CHUNK_START, GRAD_ADDR, NUMEL, INV_SCALE, FOUND_INF,
                      GRAD_TY: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(CHUNK_TENSOR + pid)
    offs = tl.load(CHUNK_START + pid) + tl.arange(0, BLOCK)
    ok = offs < tl.load(NUMEL + t)
    grad_ptr = tl.load(GRAD_ADDR + t).to(tl.pointer_type(GRAD_TY))
    g = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(tl.float32) * tl.load(INV_SCALE)
    bad = tl.max(tl.where((g == g) & (tl.abs(g) != float("inf")), 0.0, 1.0), axis=0)
    if bad > 0.0:
        tl.store(FOUND_INF, 1.0)  # every writer writes 1: the race is harmless


@triton.jit
def _adamw_update(CHUNK_TENSOR, CHUNK_START, PARAM_ADDR, GRAD_ADDR, MASTER_ADDR, M_ADDR, V_ADDR,
                  NUMEL, INV_SCALE, FOUND_INF, beta1, beta2, eps, decay, step_size, bc2_sqrt,
                  PARAM_TY: tl.constexpr, GRAD_TY: tl.constexpr, HAS_MASTER: tl.constexpr,
                  BLOCK: tl.constexpr):
    if tl.load(FOUND_INF) == 0.0:
        pid = tl.program_id(0)
        t = tl.load(CHUNK_TENSOR + pid)
        offs = tl.load(CHUNK_START + pid) + tl.arange(0, BLOCK)
        ok = offs < tl.load(NUMEL + t)
        grad_ptr = tl.load(GRAD_ADDR + t).to(tl.pointer_type(GRAD_TY))
        m_ptr = tl.load(M_ADDR + t).to(tl.pointer_type(tl.float32))
        v_ptr = tl.load(V_ADDR + t).to(tl.pointer_type(tl.float32))
        param_ptr = tl.load(PARAM_ADDR + t).to(tl.pointer_type(PARAM_TY))
        if HAS_MASTER:
            master_ptr = tl.load(MASTER_ADDR + t).to(tl.pointer_type(tl.float32))
        else:
            master_ptr = tl.load(PARAM_ADDR + t).to(tl.pointer_type(tl.float32))
        g = tl.load(grad_ptr + offs, mask=ok, other=0.0).to(tl.float32) * tl.load(INV_SCALE)
        p = tl.load(master_ptr + offs, mask=ok, other=0.0)
        m = tl.load(m_ptr + offs, mask=ok, other=0.0)
        v = tl.load(v_ptr + offs, mask=ok, other=0.0)
        p = p * decay
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        p = p - step_size * m / (tl.sqrt(v) / bc2_sqrt + eps)
        tl.store(m_ptr + offs, m, mask=ok)
        tl.store(v_ptr + offs, v, mask=ok)
        tl.store(master_ptr + offs, p, mask=ok)
        if HAS_MASTER:
            if PARAM_TY == tl.bfloat16:
                # Round to nearest even by hand: Triton 3.9's interpreter truncates fp32 -> bf16,
                # and on the GPU this gives the same bits as the hardware conversion.
                bits = p.to(tl.uint32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
                p = bits.to(tl.float32, bitcast=True)
            tl.store(param_ptr + offs, p.to(PARAM_TY), mask=ok)


def _block() -> int:
    return 256 if os.environ.get("TRITON_INTERPRET") == "1" else 4096


def _addresses(tensors, device) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64).to(device)


@functools.lru_cache(maxsize=16)
def chunk_table(numels: tuple[int, ...], block: int, device: torch.device):
    """(tensor index, start offset) of every BLOCK-sized chunk of every tensor, and numels."""
    counts = torch.tensor([triton.cdiv(n, block) for n in numels])
    tensor_idx = torch.repeat_interleave(torch.arange(len(numels)), counts)
    first = torch.cumsum(counts, 0) - counts
    start = (torch.arange(int(counts.sum())) - first[tensor_idx]) * block
    return (tensor_idx.to(torch.int32).to(device), start.to(torch.int64).to(device),
            torch.tensor(numels, dtype=torch.int64).to(device))


def _table(tensors):
    return chunk_table(tuple(t.numel() for t in tensors), _block(), tensors[0].device)


def non_finite_check(grads, inv_scale, found_inf) -> None:
    """Set found_inf (fp32 0-dim) to 1 if any grad * inv_scale is inf or NaN."""
    chunks, starts, numel = _table(grads)
    _non_finite_check[(chunks.numel(),)](chunks, starts, _addresses(grads, grads[0].device),
                                         numel, inv_scale, found_inf,
                                         GRAD_TY=TL_DTYPES[grads[0].dtype], BLOCK=_block())


def adamw_update(params, grads, masters, exp_avgs, exp_avg_sqs, inv_scale, found_inf, beta1,
                 beta2, eps, decay, step_size, bc2_sqrt) -> None:
    """The update for tensors sharing (param, grad) dtypes; `masters` empty for fp32 params.

    Same signature as the CUDA op. Skipped on the device when found_inf != 0.
    """
    device = params[0].device
    chunks, starts, numel = _table(params)
    param_addr = _addresses(params, device)
    _adamw_update[(chunks.numel(),)](
        chunks, starts, param_addr, _addresses(grads, device),
        _addresses(masters, device) if masters else param_addr,
        _addresses(exp_avgs, device), _addresses(exp_avg_sqs, device), numel, inv_scale,
        found_inf, beta1, beta2, eps, decay, step_size, bc2_sqrt,
        PARAM_TY=TL_DTYPES[params[0].dtype], GRAD_TY=TL_DTYPES[grads[0].dtype],
        HAS_MASTER=bool(masters), BLOCK=_block())
