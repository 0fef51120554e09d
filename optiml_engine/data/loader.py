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


def micro_batches(rows: dict[str, np.ndarray], micro_batch_size: int) -> list[dict]:
    """Split one rank's rows of every field into micro-batches of torch tensors."""
    count = len(rows["tokens"])
    return [
        {f: torch.from_numpy(np.ascontiguousarray(a[i : i + micro_batch_size]))
         .to(torch.float32 if f == "loss_mask" else torch.int64) for f, a in rows.items()}
        for i in range(0, count, micro_batch_size)
    ]


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
        rows = [self._index(p) for p in range(start, start + per_rank)]
        self.consumed += self.global_batch_size
        return micro_batches({f: getattr(self.samples, f)[rows] for f in FIELDS},
                             self.micro_batch_size)

    def describe(self) -> str:
        s = self.samples
        return (f"{len(s)} packed samples of {s.tokens.shape[1]} tokens from {s.num_examples} "
                f"examples ({100 * s.efficiency:.1f}% full, {s.num_truncated} truncated, "
                f"{s.num_dropped} dropped)")

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])
