"""Packed micro-batches drawn from a built bench's mixture stream, window by window.

The mixture stream is endless, so it is packed in windows of `window` consecutive stream
positions: window w holds positions [w * window, (w + 1) * window), packed by the C++ packer and
its samples shuffled by (seed, w). Steps take the next `global_batch_size` samples across window
borders; data-parallel rank r takes its contiguous slice of each step, as `PackedLoader` does.
Every rank packs the same windows (packing is cheap next to a training step), so the layout never
changes what is trained on. State: the current window and the samples used from it.
"""

from __future__ import annotations

from itertools import islice

import numpy as np

from optiml_engine.data.loader import FIELDS, micro_batches
from optiml_engine.data.packing import PackedSamples, pack_examples


class MixtureLoader:
    def __init__(self, mixture, seq_length: int, global_batch_size: int, micro_batch_size: int,
                 dp_rank: int = 0, dp_size: int = 1, seed: int = 0, window: int = 20000,
                 eos_id: int = 2, pad_id: int = 1):
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global batch {global_batch_size} is not a multiple of micro batch "
                             f"{micro_batch_size} x data-parallel size {dp_size}")
        self.mixture = mixture
        self.seq_length, self.window, self.seed = seq_length, window, seed
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.eos_id, self.pad_id = eos_id, pad_id
        self.window_index, self.used = 0, 0
        self._cached: tuple[int, PackedSamples, np.ndarray] | None = None

    def samples(self, index: int) -> tuple[PackedSamples, np.ndarray]:
        """Window `index` packed, and the seeded order its samples are served in."""
        if self._cached is None or self._cached[0] != index:
            draws = islice(self.mixture.positions(index * self.window), self.window)
            packed = pack_examples([(src, tgt) for _, src, tgt in draws], self.seq_length,
                                   eos_id=self.eos_id, pad_id=self.pad_id)
            order = np.random.default_rng([self.seed, index]).permutation(len(packed))
            self._cached = (index, packed, order)
        return self._cached[1], self._cached[2]

    def next_step(self) -> list[dict]:
        rows: list[dict[str, np.ndarray]] = []
        need = self.global_batch_size
        while need:
            packed, order = self.samples(self.window_index)
            take = order[self.used : self.used + need]
            rows += [{f: getattr(packed, f)[i] for f in FIELDS} for i in take]
            need -= len(take)
            self.used += len(take)
            if self.used == len(packed):
                self.window_index, self.used = self.window_index + 1, 0
        per_rank = self.global_batch_size // self.dp_size
        mine = rows[self.dp_rank * per_rank : (self.dp_rank + 1) * per_rank]
        return micro_batches({f: np.stack([r[f] for r in mine]) for f in FIELDS},
                             self.micro_batch_size)

    def describe(self) -> str:
        packed, _ = self.samples(self.window_index)
        return (f"bench mixture, windows of {self.window} examples -> {len(packed)} samples of "
                f"{self.seq_length} tokens ({100 * packed.efficiency:.1f}% full, "
                f"{packed.num_truncated} truncated, {packed.num_dropped} dropped)")

    def state_dict(self) -> dict:
        return {"window_index": self.window_index, "used": self.used}

    def load_state_dict(self, state: dict) -> None:
        self.window_index, self.used = int(state["window_index"]), int(state["used"])
