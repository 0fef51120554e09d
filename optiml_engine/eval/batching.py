"""Left-padded prompt batches for decoding with a KV cache.

Prompts end at the same column, so the next token of every row is predicted from the last one.
Padding gets document id 0 and real tokens id 1: a real token never attends to padding, and a pad
token attends only to earlier pads, so no row of the attention mask is empty. Position ids count
from each row's first real token (pads sit at position 0), as the model saw them in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD_DOC, REAL_DOC = 0, 1


def left_pad(prompts: list[list[int]], pad_id: int, device=None):
    """-> input_ids, position_ids, doc_ids [B, max_len] and the prompt lengths [B]."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (start it with </s>)")
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lengths.max())
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
    columns = torch.arange(width, device=device)[None, :]
    pads = (width - lengths)[:, None]
    position_ids = (columns - pads).clamp(min=0)
    doc_ids = torch.where(columns >= pads, REAL_DOC, PAD_DOC)
    return ids, position_ids, doc_ids, lengths


def right_pad(seqs: list[list[int]], pad_id: int, device=None):
    """-> ids [N, max_len] and a boolean mask of the real tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long, device=device)
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
    return ids, mask


def output_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final hidden states through the tied output embedding."""
    return F.linear(hidden, model.output_weight)
