"""Serves packed samples as this data-parallel rank's micro-batches, step by step.

The stream is an endless sequence of epochs, each a seeded permutation of the samples. A step
takes the next `global_batch_size` samples of the stream; data-parallel rank r takes the r-th
contiguous slice and splits it into micro-batches. The state is one number, the samples consumed,
so a resumed run (even with another data-parallel size) continues exactly where it stopped.
"""

from __future__ import annotations

import numpy as np
import torch

FIELDS = ("tokens", "labels", "loss_mask", "position_ids", "doc_ids")


class PackedLoader:
    def __init__(
        self,
        samples,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"global batch {global_batch_size} is not a multiple of micro batch "
                f"{micro_batch_size} x data-parallel size {dp_size}"
            )
        self.samples = samples
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self.consumed = 0
        self._epoch, self._order = -1, None

    def _index(self, position: int) -> int:
        n = len(self.samples)
        epoch = position // n
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._epoch = epoch
        return int(self._order[position % n])

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches for one optimizer step."""
        per_rank = self.global_batch_size // self.dp_size
        start = self.consumed + self.dp_rank * per_rank
        indices = [self._index(p) for p in range(start, start + per_rank)]
        self.consumed += self.global_batch_size
        batches = []
        for i in range(0, per_rank, self.micro_batch_size):
            rows = indices[i : i + self.micro_batch_size]
            batch = {
                f: torch.from_numpy(np.asarray(getattr(self.samples, f)[rows])) for f in FIELDS
            }
            batch = {f: t.long() if f != "loss_mask" else t.float() for f, t in batch.items()}
            batches.append(batch)
        return batches

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])
