"""Console progress lines with an ETA, and TensorBoard scalars under `train/`."""

from __future__ import annotations

import sys
import time


class MetricsLogger:
    def __init__(self, log_dir: str | None, total_steps: int, console: bool = True):
        self.total_steps = total_steps
        self.console = console
        self.writer = None
        if log_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir)
        self.start(0)

    def start(self, step: int) -> None:
        """The ETA counts from here (a resumed run starts at its checkpoint's step)."""
        self._start, self._start_step = time.perf_counter(), step

    def info(self, message: str) -> None:
        if self.console:
            print(message, file=sys.stderr, flush=True)

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def progress(self, step: int, metrics: dict[str, float]) -> None:
        """A console line after `step` optimizer steps, with the ETA of the remaining ones."""
        elapsed = time.perf_counter() - self._start
        rate = (step - self._start_step) / max(elapsed, 1e-9)
        eta = (self.total_steps - step) / max(rate, 1e-9)
        self.info(
            f"step {step}/{self.total_steps} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.3g}"
            f" | grad norm {metrics['grad_norm']:.3f}"
            f" | {metrics['target_tokens_per_s']:.0f} tgt tok/s"
            f" | packing {100 * metrics['packing_efficiency']:.1f}% | eta {eta:.0f}s"
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
