import pytest
import torch

from optiml_engine.config import load_recipe
from optiml_engine.planner import layouts, model_params, plan_layout

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("preset, hf_kwargs", [
    ("125m", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072)),
    ("350m", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
                  word_embed_proj_dim=512, do_layer_norm_before=False)),
])
def test_parameter_count_equals_transformers(preset, hf_kwargs):
    with torch.device("meta"):
        hf = transformers.OPTForCausalLM(transformers.OPTConfig(**hf_kwargs))
    expected = sum(p.numel() for p in hf.parameters())  # tied lm_head counted once
    assert model_params(load_recipe(None, [f"model.preset={preset}"]).model)["total"] == expected


def test_memory_arithmetic_by_hand():
    recipe = load_recipe(None, ["model.hidden_size=64", "model.num_layers=4", "model.num_heads=4",
                                "model.vocab_size=100", "model.max_position_embeddings=30",
                                "data.seq_length=16", "train.global_batch_size=8",
                                "train.micro_batch_size=1", "parallel.shard=zero1"])
    plan = plan_layout(recipe, tp=2, pp=2, dp=2)
    layer = 4 * 64 * 64 + 4 * 64 + 2 * 64 * 256 + 256 + 64 + 4 * 64  # 49984
    embed = 100 * 64 + 32 * 64 + 2 * 64  # 8576
    assert plan.params_per_gpu == (4 * layer // 2 + embed) // 2
    assert plan.optimizer_gib * 2**30 == pytest.approx(plan.params_per_gpu * 12 / 2)
    # fp32 weights: 4 bytes for the weight, 4 for its gradient
    assert plan.weights_gib * 2**30 == pytest.approx(plan.params_per_gpu * 8)
    # (10 + 24/t) s b h bytes per layer, 2 layers per stage, min(pp, micro-batches) in flight
    assert plan.activations_gib * 2**30 == pytest.approx(16 * 64 * (10 + 12) * 2 * 2)
    assert {(p.tp, p.pp, p.dp) for p in layouts(recipe, 8)} >= {(1, 1, 8), (2, 2, 2), (4, 2, 1)}
