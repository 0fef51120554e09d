"""AdamW with OPT-IML's parameter groups: no weight decay on biases and LayerNorm weights."""

from __future__ import annotations

import torch

from optiml_engine.kernels.adamw_optimizer import MixedPrecisionAdamW


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """Mixed-precision AdamW; its backend comes from the recipe's kernels.adamw (dispatch)."""
    return MixedPrecisionAdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                               betas=tuple(cfg.betas), eps=cfg.eps)
