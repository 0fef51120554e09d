"""Learning-rate schedule: linear warm-up, then linear (OPT-IML) or cosine decay, or constant."""

from __future__ import annotations

import math


def lr_at(step: int, cfg, total_steps: int) -> float:
    """LR for optimizer step `step` (0-based) of `total_steps`; reaches cfg.min_lr at the end."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step + 1 - cfg.warmup_steps) / decay_steps)
    if cfg.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * factor
