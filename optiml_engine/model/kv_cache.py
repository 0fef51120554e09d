"""The key/value cache of incremental decoding (generation and rank classification)."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values, plus document ids, in buffers sized for the whole decode:
    each step writes into them instead of concatenating, so decoding n tokens copies O(n)
    cached entries instead of O(n^2). `capacity` is a hint (0: exactly what the first step
    needs); the buffers double when a decode runs past it."""

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.filled: dict[int, int] = {}
        self._doc_ids: torch.Tensor | None = None
        self._doc_filled = 0

    @property
    def length(self) -> int:
        return next(iter(self.filled.values()), 0)

    def _room(self, buffer: torch.Tensor | None, like: torch.Tensor, used: int, extra: int):
        """`buffer`, created or grown so that `used + extra` entries fit along dim 1."""
        need = used + extra
        if buffer is not None and need <= buffer.shape[1]:
            return buffer
        size = max(self.capacity, need) if buffer is None else max(2 * buffer.shape[1], need)
        grown = like.new_empty((like.shape[0], size, *like.shape[2:]))
        if buffer is not None:
            grown[:, :used] = buffer[:, :used]
        return grown

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write this step's [B, S, H, D] keys and values; return views of everything cached."""
        used = self.filled.get(layer, 0)
        steps = k.shape[1]
        self.keys[layer] = self._room(self.keys.get(layer), k, used, steps)
        self.values[layer] = self._room(self.values.get(layer), v, used, steps)
        self.keys[layer][:, used:used + steps] = k
        self.values[layer][:, used:used + steps] = v
        self.filled[layer] = used + steps
        return self.keys[layer][:, :used + steps], self.values[layer][:, :used + steps]

    def extend_doc_ids(self, doc_ids: torch.Tensor | None) -> torch.Tensor | None:
        if doc_ids is None:
            return None
        used, steps = self._doc_filled, doc_ids.shape[1]
        self._doc_ids = self._room(self._doc_ids, doc_ids, used, steps)
        self._doc_ids[:, used:used + steps] = doc_ids
        self._doc_filled = used + steps
        return self._doc_ids[:, :used + steps]

    @property
    def doc_ids(self) -> torch.Tensor | None:
        return None if self._doc_ids is None else self._doc_ids[:, :self._doc_filled]

    def select(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) the given batch rows."""
        for layer in self.keys:
            self.keys[layer] = self.keys[layer][rows]
            self.values[layer] = self.values[layer][rows]
        if self._doc_ids is not None:
            self._doc_ids = self._doc_ids[rows]
