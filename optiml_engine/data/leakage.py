"""Train/eval leakage: instance pairs sharing more than a set share of word 13-grams.

Text is lower-cased and split into words (punctuation dropped). A text shorter than n words counts
as one "n-gram", itself, so short exact duplicates are caught too. The share of a pair is the
number of shared n-grams over the eval instance's n-grams; pairs above the threshold are flagged.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    words = tuple(WORD.findall(text.lower()))
    if len(words) < n:
        return {words} if words else set()
    return {words[i:i + n] for i in range(len(words) - n + 1)}


def find_leaks(train: Iterable[tuple[str, str]], evals: Iterable[tuple[str, str]], n: int = 13,
               threshold: float = 0.5) -> list[dict]:
    """Flag (train key, eval key) pairs whose shared n-gram share exceeds `threshold`.

    `train` and `evals` are (key, text) pairs; keys are whatever the caller uses to name an
    instance (e.g. "task/id"). Returns dicts {train, eval, share}, sorted by eval then train key.
    """
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    eval_keys, eval_sizes = [], []
    for key, text in evals:
        grams = ngrams(text, n)
        if not grams:
            continue
        slot = len(eval_keys)
        eval_keys.append(key)
        eval_sizes.append(len(grams))
        for g in grams:
            index[g].append(slot)
    leaks = []
    for key, text in train:
        shared: dict[int, int] = defaultdict(int)
        for g in ngrams(text, n):
            for slot in index.get(g, ()):
                shared[slot] += 1
        for slot, count in shared.items():
            share = count / eval_sizes[slot]
            if share > threshold:
                leaks.append({"train": key, "eval": eval_keys[slot], "share": round(share, 4)})
    leaks.sort(key=lambda d: (d["eval"], d["train"]))
    return leaks
