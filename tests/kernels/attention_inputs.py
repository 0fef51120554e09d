"""Inputs shared by the Triton attention tests: packed rows, q/k/v, the GPU-size case."""

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = 16  # small tiles so short rows still span several tile borders
# Lengths 1 and odd, examples crossing the 16-token tile borders, two rows of different layouts.
ROWS = [[1, 19, 16, 33, 7], [40, 33, 1, 2]]
# The GPU shape: 2048-token rows holding 8 examples each.
GPU_LENGTHS = [301, 17, 512, 1, 255, 390, 200, 372]


def doc_ids_from_lengths(rows):
    ids = [torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r)) for r in rows]
    return torch.stack(ids).to(DEVICE)


def qkv(b, s, h, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=g).to(DEVICE, dtype).requires_grad_()
            for _ in range(3)]


def gpu_case(head_dim, seed):
    """(doc_ids, q, k, v, grad_out): two bf16 2048-token rows of 8 examples, 4 heads."""
    doc_ids = doc_ids_from_lengths([GPU_LENGTHS, GPU_LENGTHS[::-1]])
    q, k, v = qkv(2, 2048, 4, head_dim, torch.bfloat16, seed=seed)
    return doc_ids, q, k, v, torch.randn_like(q)


def instruction_rows(n_rows, seq, seed):
    """Rows of `seq` tokens filled with examples of the instruction-like length profile of
    benchmarks/packing.py (log-normal body, median 120; 5% spread up to `seq`; written out here
    so that these tests need no compiled packer), in the order drawn while they fit; what is
    left of a row is one padding run with an id of its own."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        body = rng.lognormal(mean=np.log(120), sigma=0.8, size=512)
        tail = rng.uniform(300, seq, size=512)
        drawn = np.clip(np.where(rng.random(512) < 0.05, tail, body).astype(np.int64), 4, seq)
        lengths, room = [], seq
        for n in drawn.tolist():
            if n <= room:
                lengths.append(n)
                room -= n
            if room < 4:
                break
        rows.append(lengths + ([room] if room else []))
    return rows
