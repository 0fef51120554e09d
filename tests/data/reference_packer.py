"""Pure-Python reference of the packing spec, written for clarity rather than speed.

The C++ packer (`optiml_engine.data.packing`) must produce exactly what these functions produce.
"""

from __future__ import annotations

import numpy as np


def reference_pack_lengths(lengths, capacity: int) -> list[list[int]]:
    """Best-fit decreasing with a linear scan over the open bins."""
    lengths = [int(n) for n in lengths]
    for i, n in enumerate(lengths):
        if not 1 <= n <= capacity:
            raise ValueError(f"example {i} has length {n}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # sorted() is stable
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        best = None
        for b in range(len(bins)):  # tightest fit; strict `<` keeps the lowest bin on ties
            if free[b] >= lengths[i] and (best is None or free[b] < free[best]):
                best = b
        if best is None:
            bins.append([])
            free.append(capacity)
            best = len(bins) - 1
        bins[best].append(i)
        free[best] -= lengths[i]
    return bins


def reference_pack_examples(examples, seq_length: int, eos_id: int = 2, pad_id: int = 1) -> dict:
    """The same outputs as `pack_examples`, as a dict of numpy arrays and counts."""
    sequences = []  # per kept example: list of (token, role)
    truncated = dropped = 0
    for src, tgt in examples:
        src, tgt = [int(t) for t in src], [int(t) for t in tgt]
        if len(tgt) + 2 > seq_length:
            dropped += 1
            continue
        excess = len(src) + len(tgt) + 2 - seq_length
        if excess > 0:
            src = src[excess:]  # the oldest source tokens go first
            truncated += 1
        seq = [(eos_id, "open")] + [(t, "src") for t in src] + [(t, "tgt") for t in tgt]
        sequences.append(seq + [(eos_id, "close")])

    bins = reference_pack_lengths([len(s) for s in sequences], seq_length)
    fields = {k: [] for k in ("tokens", "labels", "loss_mask", "position_ids", "doc_ids")}
    for members in bins:
        row = {k: [] for k in fields}
        for doc, e in enumerate(members):
            seq = sequences[e]
            for i, (token, _) in enumerate(seq):
                nxt = seq[i + 1] if i + 1 < len(seq) else None
                row["tokens"].append(token)
                row["labels"].append(nxt[0] if nxt else pad_id)
                row["loss_mask"].append(1.0 if nxt and nxt[1] in ("tgt", "close") else 0.0)
                row["position_ids"].append(i)
                row["doc_ids"].append(doc)
        pad = seq_length - len(row["tokens"])
        for key, value in (("tokens", pad_id), ("labels", pad_id), ("loss_mask", 0.0),
                           ("position_ids", 0), ("doc_ids", len(members))):
            row[key] += [value] * pad
        for key in fields:
            fields[key].append(row[key])

    out = {k: np.array(v, dtype=np.float32 if k == "loss_mask" else np.int64).reshape(
        len(bins), seq_length) for k, v in fields.items()}
    real = sum(len(s) for s in sequences)
    out.update(num_examples=len(sequences), num_truncated=truncated, num_dropped=dropped,
               efficiency=real / (len(bins) * seq_length) if bins else 0.0)
    return out
