"""The needed-FLOP count (model/flops.py) against counts done by hand."""

from types import SimpleNamespace

import torch

from optiml_engine.model.flops import (
    causal_pairs,
    dense_flops_per_token,
    model_flops,
    step_flops,
)

# 2 layers, width 8, ffn 32, vocabulary 100: small enough to count every matmul by hand.
CFG = SimpleNamespace(hidden_size=8, ffn_hidden_size=32, num_layers=2, vocab_size=100,
                      word_embed_proj_dim=8)


def test_dense_flops_per_token_by_hand():
    # per layer: q, k, v, out 8x8 = 4*64 = 256; fc1 8x32 + fc2 32x8 = 512 -> 768 weights;
    # 2 layers = 1536 weights; 2 FLOPs per multiply-add, x3 for forward + two backward matmuls
    assert dense_flops_per_token(CFG) == 6 * 1536 == 9216


def test_model_flops_packed_sample_of_two_examples_by_hand():
    # one 7-token sample packing examples of 4 and 3 tokens, 3 target tokens.
    # dense: 7 tokens x 9216 = 64512
    # output projection: 3 targets x 6 x 8 x 100 = 14400
    # attention: causal pairs 4*5/2 + 3*4/2 = 10 + 6 = 16 (not 7*8/2 = 28 across examples);
    #   per layer and pair QK^T 2*8 + PV 2*8 = 32 forward FLOPs, x3 = 96; x 2 layers x 16 = 3072
    assert model_flops(CFG, [[4, 3]], target_tokens=3) == 64512 + 14400 + 3072
    # default: every token has a loss (full LM head): 7 x 4800 = 33600
    assert model_flops(CFG, [[4, 3]]) == 64512 + 33600 + 3072
    # a flat list of lengths is the same examples
    assert model_flops(CFG, [4, 3], target_tokens=3) == 64512 + 14400 + 3072


def test_project_in_out_counted_when_embedding_is_narrower():
    cfg = SimpleNamespace(hidden_size=8, ffn_hidden_size=32, num_layers=2, vocab_size=100,
                          word_embed_proj_dim=4)
    # + project_in 4x8 and project_out 8x4 = 64 weights
    assert dense_flops_per_token(cfg) == 6 * (1536 + 64)


def test_causal_pairs_per_example_and_without_padding():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2]])
    real = torch.tensor([[True] * 5 + [False] * 2])  # doc 2 is padding
    assert causal_pairs(doc_ids) == 6 + 3 + 3
    assert causal_pairs(doc_ids, real) == 6 + 3


def test_step_flops_from_loader_batches_matches_the_hand_count():
    # the same 4 + 3 sample as the loader serves it, with two padding positions (pad id 1)
    batch = {"tokens": torch.tensor([[2, 5, 6, 2, 7, 8, 2, 1, 1]]),
             "doc_ids": torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2]]),
             "loss_mask": torch.tensor([[0, 0, 1, 1, 0, 1, 0, 0, 0]], dtype=torch.float32)}
    assert step_flops(CFG, [batch, batch]) == 2 * (64512 + 14400 + 3072)
