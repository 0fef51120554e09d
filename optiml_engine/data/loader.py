"""Serves packed samples as this data-parallel rank's micro-batches, step by step: one loader for
a bench's mixture stream and for a finite set of examples (a JSONL file).

Samples come in windows: window w is a `PackedSamples` (`pack_window(w)`) served in a seeded
order (a permutation by (seed, w); file order without shuffling). For a finite set every window
is the same packed set, one epoch; for a bench, window w packs the mixture stream's positions
[w * window, (w + 1) * window). A step takes the next `global_batch_size` samples across window
borders; data-parallel rank r takes the r-th contiguous slice and splits it into micro-batches.
Every rank walks the same windows, so the layout never changes what is trained on. The state is
the window and the samples used from it, so a resumed run (even with another data-parallel
size) continues exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

import numpy as np
import torch

from optiml_engine.data.packing import PackedSamples, pack_examples

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
    def __init__(self, pack_window: Callable[[int], PackedSamples], global_batch_size: int,
                 micro_batch_size: int, dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
                 shuffle: bool = True, label: str = "packed samples"):
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global batch {global_batch_size} is not a multiple of micro batch "
                             f"{micro_batch_size} x data-parallel size {dp_size}")
        self.pack_window = pack_window
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.shuffle, self.label = seed, shuffle, label
        self.window_index, self.used = 0, 0
        self._windows: dict[int, tuple[PackedSamples, np.ndarray]] = {}

    def window(self, index: int) -> tuple[PackedSamples, np.ndarray]:
        """Window `index` packed, and the order its samples are served in (the last two are
        kept: a step's slice may straddle a border)."""
        if index not in self._windows:
            packed = self.pack_window(index)
            n = len(packed)
            order = (np.random.default_rng([self.seed, index]).permutation(n) if self.shuffle
                     else np.arange(n))
            self._windows = {k: v for k, v in self._windows.items() if k == index - 1}
            self._windows[index] = (packed, order)
        return self._windows[index]

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches for one optimizer step."""
        picks: list[tuple[int, int]] = []  # (window, sample) for the whole global batch
        need = self.global_batch_size
        while need:
            packed, order = self.window(self.window_index)
            take = order[self.used : self.used + need]
            picks += [(self.window_index, int(i)) for i in take]
            need -= len(take)
            self.used += len(take)
            if self.used == len(packed):
                self.window_index, self.used = self.window_index + 1, 0
        per_rank = self.global_batch_size // self.dp_size
        mine = picks[self.dp_rank * per_rank : (self.dp_rank + 1) * per_rank]
        rows = {f: np.stack([getattr(self.window(w)[0], f)[i] for w, i in mine]) for f in FIELDS}
        return micro_batches(rows, self.micro_batch_size)

    def describe(self) -> str:
        s, _ = self.window(self.window_index)
        return (f"{self.label} -> {len(s)} packed samples of {s.tokens.shape[1]} tokens from "
                f"{s.num_examples} examples ({100 * s.efficiency:.1f}% full, "
                f"{s.num_truncated} truncated, {s.num_dropped} dropped)")

    def state_dict(self) -> dict:
        return {"window_index": self.window_index, "used": self.used}

    def load_state_dict(self, state: dict) -> None:
        if "consumed" in state:  # a finite set's earlier state: samples served so far
            n = len(self.window(0)[0])
            self.window_index, self.used = divmod(int(state["consumed"]), n)
            return
        self.window_index, self.used = int(state["window_index"]), int(state["used"])


def epoch_loader(samples: PackedSamples, global_batch_size: int, micro_batch_size: int,
                 dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
                 shuffle: bool = True) -> PackedLoader:
    """A finite set of packed samples served epoch after epoch (window = epoch)."""
    return PackedLoader(lambda _: samples, global_batch_size, micro_batch_size, dp_rank,
                        dp_size, seed, shuffle, label="examples")


def mixture_loader(mixture, seq_length: int, global_batch_size: int, micro_batch_size: int,
                   dp_rank: int = 0, dp_size: int = 1, seed: int = 0, window: int = 20000,
                   eos_id: int = 2, pad_id: int = 1, pack=pack_examples) -> PackedLoader:
    """A bench's endless mixture stream, packed `window` stream positions at a time by
    `pack(examples, seq_length, eos_id=, pad_id=)` (data/objective.py's, for a recipe)."""

    def pack_window(index: int) -> PackedSamples:
        draws = islice(mixture.positions(index * window), window)
        return pack([(src, tgt) for _, src, tgt in draws], seq_length, eos_id=eos_id,
                    pad_id=pad_id)

    notes = [n for n in (getattr(mixture, "subset_note", ""), getattr(mixture, "note", "")) if n]
    return PackedLoader(pack_window, global_batch_size, micro_batch_size, dp_rank, dp_size, seed,
                        label=f"bench mixture, windows of {window} examples"
                        + "".join(f" ({n})" for n in notes))
