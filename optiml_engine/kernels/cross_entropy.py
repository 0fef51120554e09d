"""Masked cross-entropy summed over target tokens: one entry point, backends behind it."""

from __future__ import annotations

import torch.nn.functional as F


def torch_masked_cross_entropy(logits, targets, loss_mask):
    """Sum over positions where loss_mask is set of -log p(target); accumulated in fp32."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    losses = F.cross_entropy(flat, targets.reshape(-1), reduction="none")
    return (losses * loss_mask.reshape(-1).to(losses.dtype)).sum()


def masked_cross_entropy(logits, targets, loss_mask):
    """logits [..., V], targets and loss_mask [...]; returns the fp32 sum of masked losses."""
    return torch_masked_cross_entropy(logits, targets, loss_mask)
