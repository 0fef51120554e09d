"""A tiny random OPT saved as a Hugging Face directory, shared by the eval tests."""

import pytest
import torch

TINY = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
            num_attention_heads=4, max_position_embeddings=64, dropout=0.0,
            attention_dropout=0.0, init_std=0.3)  # large weights: varied greedy outputs


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(transformers.OPTConfig(**TINY)).eval()
    with torch.no_grad():  # random LayerNorms and biases, so no mapping mistake hides
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("tiny_opt")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tiny_hf_dir):
    """(engine model, transformers model) with the same weights."""
    import transformers

    from optiml_engine.model import OPTForCausalLM

    ours = OPTForCausalLM.from_hf(tiny_hf_dir).eval()
    theirs = transformers.OPTForCausalLM.from_pretrained(tiny_hf_dir).eval()
    return ours, theirs
