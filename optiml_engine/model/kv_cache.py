"""Key/value cache for incremental decoding: per-layer keys and values, plus document ids."""

from __future__ import annotations

import torch


class KVCache:
    """Grows by concatenation along the sequence; enough for 256-token greedy decoding."""

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.doc_ids: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if not self.keys else next(iter(self.keys.values())).shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append this step's [B, S, H, D] keys and values; return everything cached so far."""
        if layer in self.keys:
            k = torch.cat([self.keys[layer], k], dim=1)
            v = torch.cat([self.values[layer], v], dim=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def extend_doc_ids(self, doc_ids: torch.Tensor | None) -> torch.Tensor | None:
        """Document ids of every cached key, this step's included (called once per forward)."""
        if doc_ids is None:
            return None
        self.doc_ids = doc_ids if self.doc_ids is None else torch.cat([self.doc_ids, doc_ids], 1)
        return self.doc_ids

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (drop finished sequences)."""
        for layer in self.keys:
            self.keys[layer] = self.keys[layer][rows]
            self.values[layer] = self.values[layer][rows]
        if self.doc_ids is not None:
            self.doc_ids = self.doc_ids[rows]
