"""Engine OPT against Hugging Face transformers' OPT with the same random weights."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from optiml_engine.model import OPTForCausalLM  # noqa: E402

TINY = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
            num_attention_heads=4, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)


def hf_model(**overrides):
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(**{**TINY, **overrides})
    model = transformers.OPTForCausalLM(cfg).eval()
    # Random LayerNorm and bias values so a mapping mistake cannot hide behind ones and zeros.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("layout", ["pre_ln", "350m_post_ln"])
def test_from_hf_and_round_trip_match_transformers(tmp_path, layout):
    extra = {} if layout == "pre_ln" else dict(do_layer_norm_before=False, word_embed_proj_dim=32)
    ref = hf_model(**extra)
    ref.save_pretrained(tmp_path / "hf")
    ids = torch.randint(3, 300, (2, 17))
    with torch.no_grad():
        expected = ref(ids).logits
        model = OPTForCausalLM.from_hf(tmp_path / "hf").eval()
        assert (model.decoder.project_in is not None) == (layout != "pre_ln")
        got = model(ids)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

        model.save_hf(tmp_path / "engine2hf")
        back = transformers.OPTForCausalLM.from_pretrained(tmp_path / "engine2hf").eval()
        torch.testing.assert_close(back(ids).logits, expected, rtol=1e-5, atol=1e-5)
        again = OPTForCausalLM.from_hf(tmp_path / "engine2hf").eval()
        torch.testing.assert_close(again(ids), expected, rtol=1e-5, atol=1e-5)


def test_pytorch_model_bin_loads_weights_only(tmp_path):
    ref = hf_model()
    # The legacy pickle format, as older OPT releases on disk have it.
    ref.config.save_pretrained(tmp_path / "hf")
    torch.save(ref.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    ids = torch.randint(3, 300, (1, 9))
    with torch.no_grad():
        got = OPTForCausalLM.from_hf(tmp_path / "hf").eval()(ids)
        torch.testing.assert_close(got, ref(ids).logits, rtol=1e-5, atol=1e-5)


def test_kv_cache_decoding_equals_full_forward(tmp_path):
    from optiml_engine.model import KVCache

    hf_model().save_pretrained(tmp_path)
    model = OPTForCausalLM.from_hf(tmp_path).eval()
    ids = torch.randint(3, 300, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache()
        steps = [model(ids[:, :7], kv_cache=cache)]
        for t in range(7, 12):
            steps.append(model(ids[:, t : t + 1], kv_cache=cache))
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
