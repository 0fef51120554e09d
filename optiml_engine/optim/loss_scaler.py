"""Loss scaling and skipped steps: dynamic for fp16 (Micikevicius et al. 2018, Megatron's
variant), constant 1 for fp32 / bf16, which still skip (and count) a step with inf/NaN gradients.

The loss is multiplied by `scale` before backward. After backward the optimizer unscales the
gradients and asks `found_inf` (true if ANY rank saw inf/NaN). A step with overflow is skipped;
after `hysteresis` overflows the scale is multiplied by `backoff` (never below `min_scale`);
after `growth_interval` clean steps in a row it is multiplied by `growth`. `max_skipped`
consecutive skipped steps abort training with a clear message: the run is diverging.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from optiml_engine.errors import Diverged


class SkippedSteps:
    """Counts steps skipped for inf/NaN gradients; `max_skipped` in a row abort the run."""

    def __init__(self, max_skipped: int = 50):
        self.max_skipped = max_skipped
        self.consecutive_skips = 0
        self.total_skips = 0

    def record(self, skipped: bool) -> bool:
        if not skipped:
            self.consecutive_skips = 0
            return False
        self.consecutive_skips += 1
        self.total_skips += 1
        if self.consecutive_skips >= self.max_skipped:
            raise Diverged(
                "training", f"{self.consecutive_skips} consecutive steps had inf/NaN gradients "
                f"(loss scale {self.scale:g}): the run is diverging",
                "lower optim.lr, use precision.dtype=bf16, or raise precision.max_skipped_steps")
        return True


class ConstantLossScaler(SkippedSteps):
    """fp32 / bf16: no scaling; a step whose gradients are not finite is still skipped, counted
    and, `max_skipped` times in a row, aborts the run."""

    scale = 1.0
    dynamic = False

    def update(self, found_inf: bool) -> bool:
        """Record one step's outcome; returns True when the step must be skipped."""
        return self.record(found_inf)

    def state_dict(self) -> dict:
        return {"consecutive_skips": self.consecutive_skips, "total_skips": self.total_skips}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            if key in ("consecutive_skips", "total_skips"):
                setattr(self, key, int(value))


class DynamicLossScaler(SkippedSteps):
    dynamic = True

    def __init__(self, initial_scale: float = 2.0**16, growth_interval: int = 1000,
                 hysteresis: int = 2, min_scale: float = 1.0, max_skipped: int = 50,
                 growth: float = 2.0, backoff: float = 0.5):
        super().__init__(max_skipped)
        self.scale = float(initial_scale)
        self.growth_interval, self.hysteresis = growth_interval, hysteresis
        self.min_scale = float(min_scale)
        self.growth, self.backoff = growth, backoff
        self.clean_steps = 0
        self.hysteresis_left = hysteresis

    def update(self, found_inf: bool) -> bool:
        """Record one step's outcome; returns True when the step must be skipped."""
        if found_inf:
            self.clean_steps = 0
            self.hysteresis_left -= 1
            if self.hysteresis_left <= 0:
                self.scale = max(self.scale * self.backoff, self.min_scale)
            return self.record(True)
        self.record(False)
        self.clean_steps += 1
        if self.clean_steps == self.growth_interval:
            self.scale *= self.growth
            self.clean_steps = 0
            self.hysteresis_left = self.hysteresis
        return False

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps,
                "hysteresis_left": self.hysteresis_left,
                "consecutive_skips": self.consecutive_skips, "total_skips": self.total_skips}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))


def build_loss_scaler(precision):
    """From a config.PrecisionConfig."""
    if precision.dtype != "fp16":
        return ConstantLossScaler(precision.max_skipped_steps)
    return DynamicLossScaler(precision.initial_loss_scale, precision.loss_scale_window,
                             precision.hysteresis, precision.min_loss_scale,
                             precision.max_skipped_steps)


def found_inf_anywhere(tensors, group=None) -> bool:
    """True if any of `tensors` holds inf or NaN on any rank of `group` (None: this rank)."""
    tensors = [t for t in tensors if t is not None]
    flag = torch.zeros(1, device=tensors[0].device if tensors else "cpu")
    for t in tensors:
        if not torch.isfinite(t).all():
            flag.fill_(1.0)
            break
    if group is not None:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())
