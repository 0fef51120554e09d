"""Train/eval leakage: instance pairs sharing more than a set share of word 13-grams
(`find_leaks`), or OPT-IML's per task pair rule (`find_task_leaks`, §2.3).

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


def find_task_leaks(train: dict[str, list[str]], evals: dict[str, list[str]], n: int = 13,
                    threshold: float = 0.01) -> list[dict]:
    """OPT-IML's rule (§2.3): "for each pair of train and eval tasks, we compute the fraction of
    examples that have any 13-gram overlap" with the train task; a pair where more than
    `threshold` (1%) of the eval task's examples overlap is flagged.

    `train` and `evals` map a task name to its examples' texts. Returns dicts {train, eval,
    share, examples} (share = overlapping eval examples / eval examples), sorted by eval then
    train task.

    The eval side is indexed by the hash of each n-gram (an int, not the tuple of words, to
    keep the index small); the cost is one lookup per n-gram of every training example, so on
    the full bench (about 18M training examples) this is the slow step of a build."""
    index: dict[int, list[int]] = defaultdict(list)
    owner: list[int] = []  # eval example -> eval task slot
    names = list(evals)
    sizes = [len(evals[name]) for name in names]
    for slot, name in enumerate(names):
        for text in evals[name]:
            example = len(owner)
            owner.append(slot)
            for g in ngrams(text, n):
                index[hash(g)].append(example)
    leaks = []
    for name, texts in train.items():
        hit: set[int] = set()
        for text in texts:
            for g in ngrams(text, n):
                hit.update(index.get(hash(g), ()))
        per_task: dict[int, int] = defaultdict(int)
        for example in hit:
            per_task[owner[example]] += 1
        for slot, count in per_task.items():
            share = count / sizes[slot]
            if share > threshold:
                leaks.append({"train": name, "eval": names[slot], "share": round(share, 4),
                              "examples": count})
    leaks.sort(key=lambda d: (d["eval"], d["train"]))
    return leaks
