"""How the model uses the kernels: the chunked loss on hidden states equals loss_sum."""

import torch

from optiml_engine.config import ModelConfig
from optiml_engine.kernels.linear_cross_entropy import linear_cross_entropy
from optiml_engine.model.opt import OPTForCausalLM


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return OPTForCausalLM(ModelConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4,
                                      max_position_embeddings=64, dropout=0.0))


def batch():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, 96, (2, 24), generator=g)
    doc_ids = torch.tensor([[0] * 9 + [1] * 15, [0] * 20 + [1] * 4])
    position_ids = torch.cat([torch.arange(9), torch.arange(15)]).expand(2, 24).clone()
    position_ids[1] = torch.cat([torch.arange(20), torch.arange(4)])
    labels = torch.randint(3, 96, (2, 24), generator=g)
    loss_mask = (torch.rand(2, 24, generator=g) > 0.4).float()
    return tokens, position_ids, doc_ids, labels, loss_mask


def test_linear_cross_entropy_on_hidden_states_equals_loss_sum():
    model = tiny_model()
    tokens, position_ids, doc_ids, labels, loss_mask = batch()
    want = model.loss_sum(tokens, position_ids, doc_ids, labels, loss_mask)
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    hidden = model.hidden_states(tokens, position_ids, doc_ids)
    got = linear_cross_entropy(hidden, model.output_weight, labels, loss_mask, chunk_size=10)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
