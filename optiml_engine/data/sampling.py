"""The training mixture: which (task, instance) comes at every position of the stream.

Weights: a per-task scheme inside each benchmark (`proportional` to its training instances,
`eps` = examples-proportional with a per-task cap (OPT-IML: 4096), `uniform`, or `temperature`
n**(1/T)), benchmark-level percentages on top, and extra mixes given in percent of the whole
stream (reasoning, pre-training text, dialogue; OPT-IML: 1, 5 and 0).

The stream is a pure function of (seed, position): positions are drawn in fixed blocks from a
generator seeded by (seed, block), and the k-th draw of a task takes instance k of a per-task
permutation that is reshuffled every pass over the task. Hence
- the same seed gives the same stream, and a sampler started at position p continues exactly as
  one that ran from 0 (state = position);
- data-parallel rank r of R takes positions r, r + R, r + 2R, ...: the ranks' union is the 1-rank
  stream, nothing lost or repeated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import OptimlError

SCHEMES = ("proportional", "eps", "uniform", "temperature")
MIX_GROUPS = ("reasoning", "pretraining", "dialogue")
BLOCK = 1 << 16  # positions drawn per generator call; fixed forever (it defines the stream)


@dataclass
class SamplingSpec:
    scheme: str = "eps"
    eps_cap: int = 4096
    temperature: float = 1.0
    benchmark_proportions: dict[str, float] | None = None
    mixes: dict[str, float] = field(default_factory=dict)  # group -> percent of the stream


def scheme_weights(sizes: np.ndarray, spec: SamplingSpec) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.float64)
    if spec.scheme == "proportional":
        w = sizes.copy()
    elif spec.scheme == "eps":
        w = np.minimum(sizes, spec.eps_cap)
    elif spec.scheme == "uniform":
        w = (sizes > 0).astype(np.float64)
    elif spec.scheme == "temperature":
        w = sizes ** (1.0 / spec.temperature)
    else:
        raise OptimlError("data.sampling", f"unknown scheme {spec.scheme!r}",
                          f"use one of {', '.join(SCHEMES)}")
    return np.where(sizes > 0, w, 0.0)


def mixture_probabilities(sizes: list[int], groups: list[str], spec: SamplingSpec) -> np.ndarray:
    """Probability of each task at any position of the stream."""
    sizes_arr = np.asarray(sizes, dtype=np.float64)
    groups_arr = np.asarray(groups, dtype=object)
    weights = scheme_weights(sizes_arr, spec)
    present = {g for g, w in zip(groups, weights, strict=True) if w > 0}
    mixes = {g: float(p) for g, p in spec.mixes.items() if p}
    for g, p in mixes.items():
        if p < 0 or g not in present:
            raise OptimlError(f"data.mix_{g}", f"asks for {p}% {g} data but the bench has no "
                              f"{g} tasks" if p > 0 else "is negative",
                              "add those tasks to the bench or set the mix to 0")
    rest = 100.0 - sum(mixes.values())
    if rest < 0 or (rest == 0 and present - set(mixes)):
        raise OptimlError("data.mix_*", f"extra mixes sum to {100 - rest}%",
                          "they are percentages of the stream and must leave room for tasks")
    excluded = set(spec.mixes) | set(MIX_GROUPS)
    shares: dict[str, float] = dict(mixes)
    main = sorted(present - excluded)
    if spec.benchmark_proportions:
        props = {g: float(p) for g, p in spec.benchmark_proportions.items() if g in present}
        missing = [g for g in main if g not in props]
        if missing:
            raise OptimlError("data.benchmark_proportions", f"no proportion for benchmark(s) "
                              f"{', '.join(missing)} present in the bench",
                              "give every benchmark a percentage (0 to leave it out)")
        total = sum(props.values())
        if total <= 0:
            raise OptimlError("data.benchmark_proportions", "proportions sum to 0")
        shares.update({g: rest * p / total for g, p in props.items()})
    elif main:
        in_main = np.isin(groups_arr, main)
        shares.update({g: rest * weights[groups_arr == g].sum() / weights[in_main].sum()
                       for g in main})
    probs = np.zeros(len(sizes))
    for g, share in shares.items():
        mask = groups_arr == g
        if share > 0 and weights[mask].sum() > 0:
            probs[mask] = share * weights[mask] / weights[mask].sum()
    if probs.sum() <= 0:
        raise OptimlError("data", "the mixture is empty", "the bench has no training instances")
    return probs / probs.sum()


class MixtureStream:
    """Deterministic (task, instance) draws for positions of the stream."""

    def __init__(self, sizes: list[int], probabilities: np.ndarray, seed: int):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.cdf = np.cumsum(probabilities)
        self.cdf /= self.cdf[-1]
        self.seed = seed
        # task draws before each computed block; grown on demand
        self._prefix: list[np.ndarray] = [np.zeros(len(sizes), dtype=np.int64)]
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _block_tasks(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0x5A3B1E, block])
        tasks = np.searchsorted(self.cdf, rng.random(BLOCK), side="right")
        return np.minimum(tasks, len(self.cdf) - 1)

    def _prefix_counts(self, block: int) -> np.ndarray:
        while len(self._prefix) <= block:
            b = len(self._prefix) - 1
            counts = np.bincount(self._block_tasks(b), minlength=len(self.cdf))
            self._prefix.append(self._prefix[-1] + counts)
        return self._prefix[block]

    def _instance(self, task: int, occurrence: int) -> int:
        n = int(self.sizes[task])
        epoch, k = divmod(occurrence, n)
        key = (task, epoch)
        perm = self._perms.get(key)
        if perm is None:
            if len(self._perms) > 4096:
                self._perms.clear()
            perm = np.random.default_rng([self.seed, 0x9E2F, task, epoch]).permutation(n)
            self._perms[key] = perm
        return int(perm[k])

    def block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(task ids, occurrence numbers) of every position in one block."""
        tasks = self._block_tasks(block)
        order = np.argsort(tasks, kind="stable")
        sorted_tasks = tasks[order]
        starts = np.searchsorted(sorted_tasks, sorted_tasks, side="left")
        within = np.empty(BLOCK, dtype=np.int64)
        within[order] = np.arange(BLOCK) - starts
        return tasks, self._prefix_counts(block)[tasks] + within

    def iterate(self, position: int = 0, dp_rank: int = 0, dp_size: int = 1
                ) -> Iterator[tuple[int, int, int]]:
        """(position, task, instance) for this rank's positions from `position` on, where
        `position` is a global stream position (the rank skips to its next own one)."""
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside data-parallel size {dp_size}")
        pos = position + (dp_rank - position) % dp_size
        while True:
            block = pos // BLOCK
            tasks, occurrences = self.block(block)
            end = (block + 1) * BLOCK
            for p in range(pos, end, dp_size):
                i = p - block * BLOCK
                yield p, int(tasks[i]), self._instance(int(tasks[i]), int(occurrences[i]))
            pos += -(-(end - pos) // dp_size) * dp_size

    def take(self, count: int, position: int = 0, dp_rank: int = 0, dp_size: int = 1
             ) -> list[tuple[int, int, int]]:
        it = self.iterate(position, dp_rank, dp_size)
        return [next(it) for _ in range(count)]
