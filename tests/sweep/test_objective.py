"""data.loss_on and data.packing (OPT-IML §3.1-3.2) against hand computations: the whole-sequence
loss of a 2-example packed sample is the loss of each example run alone over all its next-token
predictions; attention crosses examples only without document attention."""

import json

import pytest
import torch
import torch.nn.functional as F

from optiml_engine.config import ModelConfig
from optiml_engine.data.dataset import build_training_samples
from optiml_engine.data.objective import pack_for_objective
from optiml_engine.data.tokenizer import load_tokenizer
from optiml_engine.model.opt import OPTForCausalLM

EXAMPLES = [([10, 11, 12], [13, 14]), ([20, 21], [22, 23, 24])]  # (source, target) ids
EOS = 2


def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, hidden_size=16, num_layers=2, num_heads=2,
                      max_position_embeddings=32, dropout=0.0)
    return OPTForCausalLM(cfg).eval()


def as_tensors(packed):
    return {f: torch.from_numpy(getattr(packed, f)) for f in
            ("tokens", "labels", "loss_mask", "position_ids", "doc_ids")}


def test_whole_sequence_loss_equals_each_example_alone():
    model = tiny_model()
    packed = pack_for_objective(EXAMPLES, 16, loss_on="sequence")
    assert len(packed) == 1  # both examples in one sample
    b = as_tensors(packed)
    with torch.no_grad():
        got = model.loss_sum(b["tokens"], b["position_ids"], b["doc_ids"], b["labels"],
                             b["loss_mask"]) / b["loss_mask"].sum()
        # by hand: `</s> src tgt </s>` alone, every next token predicted (positions 0..L-1)
        total, count = 0.0, 0
        for src, tgt in EXAMPLES:
            ids = torch.tensor([[EOS, *src, *tgt, EOS]])
            logits = model(ids, torch.arange(ids.shape[1])[None])
            total += F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    assert b["loss_mask"].sum().item() == count == (3 + 2 + 1) + (2 + 3 + 1)
    assert got.item() == pytest.approx(total / count, rel=1e-5)


def test_target_loss_counts_only_targets_and_closing_eos():
    packed = pack_for_objective(EXAMPLES, 16)  # the default: target
    assert packed.loss_mask.sum() == (2 + 1) + (3 + 1)
    assert sorted(packed.labels[packed.loss_mask > 0].tolist()) == sorted(
        [13, 14, EOS, 22, 23, 24, EOS])


@pytest.mark.parametrize("packing, crosses", [("documents", False),
                                              ("no_document_attention", True)])
def test_attention_crosses_examples_only_without_document_attention(packing, crosses):
    model = tiny_model()
    packed = as_tensors(pack_for_objective(EXAMPLES, 16, packing=packing))
    tokens = packed["tokens"].clone()
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    first_len = starts[1]  # the second example starts where positions restart
    second = torch.zeros(16, dtype=torch.bool)
    second[first_len:first_len + 2 + 2 + 3] = True
    changed = tokens.clone()
    changed[0, 1] = 5  # a source token of the first example
    with torch.no_grad():
        a = model(tokens, packed["position_ids"], packed["doc_ids"])
        b = model(changed, packed["position_ids"], packed["doc_ids"])
    diff = (a[0, second] - b[0, second]).abs().max().item()
    assert (diff > 1e-4) == crosses
    assert (a[0, :1] - b[0, :1]).abs().max().item() == 0.0  # before the change: causal


def test_padded_puts_one_example_per_sample():
    packed = pack_for_objective(EXAMPLES, 16, packing="padded")
    assert len(packed) == 2
    assert packed.tokens.tolist() == [[EOS, 10, 11, 12, 13, 14, EOS] + [1] * 9,
                                      [EOS, 20, 21, 22, 23, 24, EOS] + [1] * 9]


def test_recipe_keys_reach_the_training_samples(tiny_recipe):
    """Through the recipe: the loss covers source + target + closing </s> per example."""
    tok = load_tokenizer("byte")
    pairs = [(f"Reverse: {w}\nAnswer:", f" {w[::-1]}") for w in ("ab", "cde")]
    recipe = tiny_recipe("data.loss_on=sequence", "data.packing=padded")
    with open(recipe.data.train_path, "w") as f:
        for s, t in pairs:
            f.write(json.dumps({"src": s, "tgt": t}) + "\n")
    samples = build_training_samples(recipe, tok)
    assert len(samples) == 2
    assert samples.loss_mask.sum() == sum(len(s) + len(t) + 1 for s, t in pairs)
