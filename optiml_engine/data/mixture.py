"""The training stream of a built bench: (src_ids, tgt_ids) examples drawn by the mixture.

`training_stream(bench_dir, spec, tokenizer, dp_rank, dp_size, seed, position)` yields this
data-parallel rank's examples, read from the bench's memory-mapped shards (no raw file is parsed).
Positions are global stream positions (see `sampling.py`): rank r of R gets positions r, r+R, ...;
to resume, pass the last position a rank consumed plus one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import OptimlError
from .bench_store import BuiltBench
from .sampling import MixtureStream, SamplingSpec, mixture_probabilities


def parse_proportions(entries: list[str]) -> dict[str, float] | None:
    """`["superni=25", "flan=20"]` (the recipe form) -> {"superni": 25.0, "flan": 20.0}."""
    if not entries:
        return None
    out = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip() or out[name.strip()] < 0:
            raise OptimlError("data.benchmark_proportions", f"bad entry {entry!r}",
                              "write benchmark=percent, e.g. superni=25")
    return out


def sampling_spec(data_cfg) -> SamplingSpec:
    """The recipe's data section as a SamplingSpec."""
    return SamplingSpec(
        scheme=data_cfg.sampling, eps_cap=data_cfg.eps_cap, temperature=data_cfg.temperature,
        benchmark_proportions=parse_proportions(data_cfg.benchmark_proportions),
        mixes={"reasoning": data_cfg.mix_reasoning, "pretraining": data_cfg.mix_pretraining,
               "dialogue": data_cfg.mix_dialogue})


class BenchMixture:
    """A built bench plus a sampling spec: per-task probabilities and the seeded stream."""

    def __init__(self, bench_dir: str | Path, spec: SamplingSpec, seed: int, tokenizer=None,
                 subset=None):
        """subset: a data.subsets.SubsetSpec; the tasks it leaves out get weight 0."""
        self.bench = BuiltBench(bench_dir)
        manifest = self.bench.manifest
        if tokenizer is not None and tokenizer.vocab_size != manifest["vocab_size"]:
            raise OptimlError(f"{bench_dir}: manifest.json",
                              f"bench was tokenised with {manifest['tokenizer']!r} (vocabulary "
                              f"{manifest['vocab_size']}), the recipe's tokenizer has "
                              f"{tokenizer.vocab_size}", "rebuild the bench with the recipe's "
                              "tokenizer or change data.tokenizer")
        tasks = manifest["tasks"]
        self.names = [t["name"] for t in tasks]
        self.sizes = [t["n_train"] for t in tasks]
        self.offsets = np.asarray([t["train_row_offset"] for t in tasks], dtype=np.int64)
        weighted, self.subset_note = self.sizes, ""
        if subset is not None and subset.active:
            from .subsets import eligible, select_tasks

            kept, self.subset_note = select_tasks(tasks, subset, seed)
            weighted = [n if t["name"] in kept or not eligible(t) else 0
                        for t, n in zip(tasks, self.sizes, strict=True)]
        self.probabilities = mixture_probabilities(weighted, [t["benchmark"] for t in tasks],
                                                   spec)
        self.stream = MixtureStream([max(s, 1) for s in self.sizes], self.probabilities, seed)
        trained = {t["benchmark"] for t in tasks if t["n_train"]}
        absent = sorted(b for b, p in (spec.benchmark_proportions or {}).items()
                        if p > 0 and b not in trained)
        # said once, with the loader's description: the other shares grow to fill the gap
        self.note = (f"no training tasks of {', '.join(absent)} in the bench: "
                     "data.benchmark_proportions renormalised over the others" if absent else "")

    def positions(self, position: int = 0, dp_rank: int = 0, dp_size: int = 1
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(global position, src_ids, tgt_ids) for this rank from `position` on."""
        for pos, task, instance in self.stream.iterate(position, dp_rank, dp_size):
            src, tgt = self.bench.example(int(self.offsets[task]) + instance)
            yield pos, src, tgt


def training_stream(bench_dir: str | Path, spec: SamplingSpec, tokenizer=None, dp_rank: int = 0,
                    dp_size: int = 1, seed: int = 0, position: int = 0
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (src_ids, tgt_ids) examples of this data-parallel rank, ready for the packer."""
    mixture = BenchMixture(bench_dir, spec, seed, tokenizer)
    for _, src, tgt in mixture.positions(position, dp_rank, dp_size):
        yield src, tgt
