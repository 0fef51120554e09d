"""Metrics against hand-computed values (the official Super-NI rules, 0-100 scale)."""

import json

import pytest

from optiml_engine.eval import metrics
from optiml_engine.eval.metrics import (
    accuracy,
    exact_match,
    is_xlingual,
    normalize_answer,
    rouge_l,
)


def test_normalisation_lowercases_strips_punctuation_folds_space_keeps_articles():
    assert normalize_answer("  The Cat's\t hat!\n") == "the cats hat"
    assert normalize_answer("A-B, (c)") == "ab c"
    assert exact_match("The answer.", ["an answer", "the  ANSWER"]) == 100.0
    assert exact_match("the cat", ["cat"]) == 0.0  # articles are not removed
    assert exact_match("yes", "Yes!") == 100.0


def test_exact_match_empty_prediction():
    assert exact_match("", ["x"]) == 0.0
    assert exact_match("", ["..."]) == 100.0  # the reference normalises to nothing as well
    assert exact_match("  ", [""]) == 100.0


def test_rouge_l_stemmed_f_measure_max_over_references():
    # tokens: ref [the, cat(s), are, run(ning)], pred [a, cat, run(s)] -> LCS 2, P 2/3, R 1/2
    expected = 100 * 2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2)
    assert rouge_l("a cat runs", ["The cats are running"]) == pytest.approx(expected, abs=1e-9)
    assert rouge_l("a cat runs", ["dogs bark", "The cats are running"]) == pytest.approx(expected)
    assert rouge_l("a cat runs", ["dogs bark"]) == 0.0
    assert rouge_l("Kabul", ["kabul."]) == 100.0


def test_rouge_l_empty_prediction_is_zero():
    assert rouge_l("", ["Kabul"]) == 0.0
    assert rouge_l("", ["Kabul", "the city"]) == 0.0


def test_non_ascii_on_the_english_track():
    # the default rouge tokenizer keeps [a-z0-9] only: "café" -> "caf", "naïve" -> "na", "ve"
    assert rouge_l("Café", ["cafe"]) == 0.0
    assert rouge_l("naïve", ["na ve"]) == 100.0
    assert exact_match("Café!", ["café"]) == 100.0
    assert exact_match("Café", ["cafe"]) == 0.0


def test_non_ascii_xlingual_fallback_uses_pretokenizer_words():
    metrics.set_xlingual_tokenizer(None)
    metrics._warned_fallback = False
    with pytest.warns(UserWarning, match="GPT-2 BPE"):
        # "你好 世界" -> 2 words, "你好" -> 1 word: LCS 1, P 1/2, R 1, F 2/3
        assert rouge_l("你好 世界", ["你好"], xlingual=True) == pytest.approx(200 / 3)
    assert rouge_l("你好 世界", ["世界 你好", "你好 世界"], xlingual=True) == 100.0


@pytest.fixture
def tiny_gpt2_files(tmp_path):
    """A byte-level BPE with a handful of merges, saved as GPT-2's vocab.json + merges.txt."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    merges = [("c", "a"), ("ca", "t"), ("Ġ", "cat"), ("d", "o"), ("do", "g")]
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    lines = "".join(f"{a} {b}\n" for a, b in merges)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + lines)
    return tmp_path


def test_xlingual_uses_gpt2_bpe_tokens_like_transformers(tiny_gpt2_files):
    from transformers import GPT2Tokenizer

    reference = GPT2Tokenizer.from_pretrained(str(tiny_gpt2_files))  # what "gpt2" resolves to
    metrics.set_xlingual_tokenizer(tiny_gpt2_files)
    try:
        for text in ["cats dog", "a cat, dogs", "Ça va dog 你好"]:
            want = [t.lstrip("Ġ") for t in reference.tokenize(text)]
            assert metrics._xlingual.tokenize(text) == want
        # "cats" -> [cat, s], "cat" -> [cat]: LCS 1, P 1/2, R 1 -> F 2/3 (no stemmer on this track)
        assert rouge_l("cats", ["cat"], xlingual=True) == pytest.approx(200 / 3)
        assert rouge_l("cats", ["cat"]) == 100.0  # English track: Porter stems cats -> cat
    finally:
        metrics.set_xlingual_tokenizer(None)


def test_track_rule_and_accuracy():
    assert not is_xlingual(["English"], ["English"])
    assert is_xlingual(["English"], ["French"])
    assert is_xlingual(["English", "Hindi"], ["English"])
    assert accuracy(" positive", ["positive"]) == 100.0
    assert accuracy("Positive", ["positive"]) == 0.0
    assert accuracy("no", ["yes", "no"]) == 100.0


def test_engine_protocol_category_over_instances_levels_over_tasks():
    """The engine's earlier averaging, still reachable as --protocol engine."""
    from optiml_engine.eval.aggregate import aggregate
    from optiml_engine.eval.protocol import ENGINE

    def rec(task, category, level, value, shots=0):
        return {"task": task, "category": category, "benchmark": "superni", "level": level,
                "shots": shots, "scores": {"rougeL": value}}

    records = [rec("t1", "qa", "L1", 100.0), rec("t1", "qa", "L1", 0.0),
               rec("t1", "qa", "L1", 50.0), rec("t2", "qa", "L1", 20.0),
               rec("t3", "cls", "L2", 10.0),
               rec("t3", "cls", "L2", 30.0, shots=5)]
    agg = aggregate(records, ENGINE)
    assert list(agg) == [0, 5]
    assert agg[0]["task"]["t1"]["rougeL"] == pytest.approx(50.0)
    assert agg[0]["category"]["qa"]["rougeL"] == pytest.approx(170.0 / 4)  # pooled instances
    assert agg[0]["level"]["L1"]["rougeL"] == pytest.approx((50.0 + 20.0) / 2)  # task means
    assert agg[0]["level"]["L2"]["rougeL"] == pytest.approx(10.0)
    assert agg[0]["benchmark"]["superni"]["rougeL"] == pytest.approx((50.0 + 20.0 + 10.0) / 3)
    assert agg[5]["level"] == {"L2": {"rougeL": 30.0}}
