"""Per-instance metrics as the official Super-NaturalInstructions evaluation computes them (their
aggregates per task, category, benchmark and level: eval/aggregate.py).

Contract: `exact_match(prediction, references)` and `rouge_l(prediction, references)` return one
instance's score on a 0-100 scale, the maximum over the references.

- exact match: both strings lower-cased, every ASCII punctuation character removed, white space
  folded to single spaces; articles are kept (SQuAD's normalisation minus article removal).
- ROUGE-L: the F-measure of `rouge_score.rouge_scorer.RougeScorer(["rougeL"])`. English tasks use
  the package's default tokenizer with the Porter stemmer (it drops non-ASCII letters). Tasks
  whose input or output language is not English (the official "xlingual" track) use GPT-2's
  byte-level BPE tokens with the leading "Ġ" stripped and no stemmer; pass `xlingual=True`. The
  GPT-2 BPE files are not bundled: `set_xlingual_tokenizer` points at a `vocab.json` +
  `merges.txt` directory (any OPT or GPT-2 Hugging Face directory) or a `tokenizer.json`. Without
  them, ROUGE-L on that track falls back to GPT-2's pre-tokenizer words (a warning says so).
"""

from __future__ import annotations

import string
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from rouge_score import rouge_scorer

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, fold white space; articles stay."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(text.split())


def _max_over_references(score: Callable[[str, str], float], prediction: str,
                         references: str | Sequence[str]) -> float:
    if isinstance(references, str):
        references = [references]
    if not references:
        raise ValueError("an instance needs at least one reference")
    return max(score(prediction, ref) for ref in references)


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """100.0 when the normalised prediction equals a normalised reference, else 0.0."""
    target = normalize_answer(prediction)
    return _max_over_references(
        lambda _, ref: 100.0 if normalize_answer(ref) == target else 0.0, prediction, references)


def accuracy(predicted_option: str, references: str | Sequence[str]) -> float:
    """Rank classification: 100.0 when the chosen option is one of the references (as written,
    surrounding white space ignored), else 0.0."""
    chosen = predicted_option.strip()
    return _max_over_references(
        lambda _, ref: 100.0 if ref.strip() == chosen else 0.0, predicted_option, references)


# --------------------------------------------------------------------------------------------
# ROUGE-L


class _Gpt2Tokens:
    """The xlingual tokenizer: GPT-2 byte-level BPE token strings, leading 'Ġ' removed."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer  # a `tokenizers.Tokenizer`, or None for the fallback

    def tokenize(self, text: str) -> list[str]:
        if self.tokenizer is not None:
            pieces = self.tokenizer.encode(text, add_special_tokens=False).tokens
        else:
            from tokenizers import pre_tokenizers

            split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            pieces = [piece for piece, _ in split.pre_tokenize_str(text)]
        return [piece.lstrip("Ġ") for piece in pieces]


def load_gpt2_bpe(path: str | Path):
    """A GPT-2 byte-level BPE `tokenizers.Tokenizer` from a directory (vocab.json + merges.txt, or
    tokenizer.json) or a tokenizer.json file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from optiml_engine.errors import OptimlError

    path = Path(path)
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        tok = Tokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        return tok
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    raise OptimlError(str(path), "no GPT-2 BPE files (vocab.json + merges.txt or tokenizer.json)",
                      "point at a Hugging Face OPT or GPT-2 directory")


_default_scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
_xlingual = _Gpt2Tokens()
_xlingual_scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_xlingual)
_warned_fallback = False


def set_xlingual_tokenizer(source) -> None:
    """Use GPT-2 BPE for non-English ROUGE-L: a path (see `load_gpt2_bpe`), a
    `tokenizers.Tokenizer`, or None to go back to the pre-tokenizer fallback."""
    if isinstance(source, str | Path):
        source = load_gpt2_bpe(source)
    _xlingual.tokenizer = source


def rouge_l(prediction: str, references: str | Sequence[str], xlingual: bool = False) -> float:
    """ROUGE-L F-measure (0-100), maximum over references; `xlingual` for non-English tasks."""
    global _warned_fallback
    if xlingual and _xlingual.tokenizer is None and not _warned_fallback:
        warnings.warn("ROUGE-L on non-English text without GPT-2 BPE files: scoring GPT-2 "
                      "pre-tokenizer words (call set_xlingual_tokenizer for the official tokens)",
                      stacklevel=2)
        _warned_fallback = True
    scorer = _xlingual_scorer if xlingual else _default_scorer
    return _max_over_references(
        lambda pred, ref: 100.0 * scorer.score(target=ref, prediction=pred)["rougeL"].fmeasure,
        prediction, references)


def is_xlingual(input_languages: Iterable[str], output_languages: Iterable[str]) -> bool:
    """The official track rule: a task is 'xlingual' unless its input and output are English."""
    return list(input_languages) != ["English"] or list(output_languages) != ["English"]


def score_generation(prediction: str, references: Sequence[str], xlingual: bool = False) -> dict:
    return {"exact_match": exact_match(prediction, references),
            "rougeL": rouge_l(prediction, references, xlingual)}
