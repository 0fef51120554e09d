"""Tile sizes the Triton attention kernels are autotuned over on a GPU.

Each kernel (forward, backward dK/dV, backward dQ) is timed once per (head dim, masking,
dropout, dtypes) on its first call and the fastest configuration is kept for the process, as
`triton.autotune` does. The sequence length is not part of the key, so evaluation with varying
lengths does not re-tune. Under TRITON_INTERPRET (CPU tests) one small configuration is used,
which still runs every call through the autotuner.

The candidates follow FlashAttention-2's choices for Hopper/Ampere: wide query tiles with 4-8
warps for the forward, square 64-tiles or narrower for the backward, which holds more tiles live.
"""

from __future__ import annotations

import os

import triton

TUNE_KEY = ["D_PAD", "HAS_DOCS", "HAS_DROPOUT"]


def _configs(rows: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, warps, stages) rows -> configs; one small one when interpreting."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        rows = [(32, 32, 4, 1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in rows]


FORWARD = _configs([(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3),
                    (64, 32, 4, 4)])
BACKWARD_DKDV = _configs([(64, 64, 4, 2), (32, 64, 4, 2), (64, 128, 8, 2), (32, 32, 4, 3)])
BACKWARD_DQ = _configs([(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 3), (32, 32, 4, 3)])
