import pytest
import torch

from optiml_engine.config import ModelConfig, load_recipe, resolve_model_config
from optiml_engine.planner import layouts, model_params, plan_layout
from optiml_engine.planner.cli import main
from optiml_engine.planner.hardware import GPUS
from optiml_engine.planner.memory import rank_memory
from optiml_engine.planner.params import local_params
from optiml_engine.planner.step_time import step_time

transformers = pytest.importorskip("transformers")
A100_40 = GPUS["a100-40gb"]


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


def test_local_params_by_hand():
    m = load_recipe(None, ["model.hidden_size=64", "model.num_layers=4", "model.num_heads=4",
                           "model.vocab_size=100", "model.max_position_embeddings=30",
                           "data.seq_length=16"]).model
    # a layer on one of 2 TP ranks: qkv 3*64*64/2 + 3*64/2, out 64*64/2 + 64, fc1 256*64/2 +
    # 256/2, fc2 64*256/2 + 64, two LayerNorms 4*64
    layer = 6144 + 96 + 2048 + 64 + 8192 + 128 + 8192 + 64 + 256
    assert local_params(m, 2, 2, 0) == 2 * layer + 100 * 64 // 2 + 32 * 64
    assert local_params(m, 2, 2, 1) == 2 * layer + 100 * 64 // 2 + 2 * 64


def test_memory_by_phase_by_hand():
    psi, w, dp = 1000, 2, 4  # 1000 fp16 parameters over 4 data-parallel ranks
    zero1 = rank_memory(psi, w, dp, "zero1", activations=500, gathered_unit=100,
                        fp32_model=False)
    assert zero1.held == {"weights": 2000, "gradients": 2000, "reduced gradient slice": 500,
                          "fp32 master": 1000, "Adam moments": 2000}
    assert zero1.phase_bytes("forward/backward") == 7500 + 500
    assert zero1.phase_bytes("optimizer step") == 7500 + 4 * 250  # the slice upcast to fp32
    assert zero1.phase_bytes("checkpoint save") == 7500  # local slices, zero-copy
    assert zero1.peak_phase == "optimizer step"
    zero3 = rank_memory(psi, w, dp, "zero3", 500, 100, False)
    assert zero3.held_bytes == 250 * (2 + 2 + 4 + 8)
    assert zero3.peak_bytes == 4000 + max(500 + 2 * 100 * 2, 4 * 250)
    none = rank_memory(psi, w, dp, "none", 500, 100, False)
    assert "gradient sync" not in none.phases  # buckets are reduced in place
    assert none.phase_bytes("optimizer step") == 16000 + 4 * 1000
    assert none.phase_bytes("checkpoint save") == 16000
    assert rank_memory(psi, 4, dp, "none", 500, 100, True).phases["optimizer step"] == {}
    # 1001 parameters: FlatAdamW pads to 4 shards of 251
    assert rank_memory(1001, 4, 4, "zero1", 0, 0, True).held["fp32 master"] == 4 * 251


def _paper(recipe, gpus, tp, dp):
    r = load_recipe(recipe, ["model.hf_path=null"])
    return plan_layout(r, tp, 1, dp, "zero3", A100_40)


def test_paper_layouts_fit_with_zero3():
    """§3.3 / Table 3: 30B on 64 A100-40GB at TP2, 175B on 128 at TP8 x DP16."""
    p30 = _paper("recipes/opt-iml-30b.yaml", 64, 2, 32)
    p175 = _paper("recipes/opt-iml-175b.yaml", 128, 8, 16)
    assert p30.fits and p175.fits
    # the model state alone: 16 bytes per parameter of the rank's share
    assert p175.memory.held_bytes == pytest.approx(16 * p175.params_per_gpu / 16, rel=1e-6)
    assert 0 < p175.time.seconds < 120
    r = load_recipe("recipes/opt-iml-175b.yaml", ["model.hf_path=null"])
    zero1 = plan_layout(r, 8, 1, 16, "zero1", A100_40)  # whole bf16 weights + grads per rank
    assert not zero1.fits and zero1.memory.held["weights"] > A100_40.memory_gib * 2**30 / 2


def test_175b_on_8_gpus_refused(capsys):
    assert main(["recipes/opt-iml-175b.yaml", "--gpus", "8", "--gpu", "a100-40gb"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    n = model_params(load_recipe("recipes/opt-iml-175b.yaml", []).model)["total"]
    assert last.startswith("refused: no layout fits")
    assert f"{16 * n / 8 / 2**30:.1f} GiB per GPU" in last


def test_overrides_anywhere_and_tp_inside_a_node(capsys):
    argv = ["recipes/opt-iml-30b.yaml", "--gpus", "16", "train.global_batch_size=32",
            "--gpus-per-node", "4", "--gpu", "h100", "parallel.sp=false", "--top", "100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "global batch 32" in out and "sp=False" in out and "H100" in out
    rows = [line.split() for line in out.splitlines() if line[:1] in (" ", "*")
            and line.strip()[:1].isdigit()]
    assert rows and max(int(r[0].lstrip("*")) for r in rows) == 4
    assert "tensor parallelism across nodes" in out


def test_plans_cover_the_layouts():
    r = load_recipe(None, ["model.hidden_size=64", "model.num_layers=4", "model.num_heads=4",
                           "model.vocab_size=96", "data.seq_length=16",
                           "train.global_batch_size=8"])
    plans, skipped = layouts(r, 8, A100_40)
    got = {(p.tp, p.pp, p.dp, p.shard) for p in plans}
    assert {(1, 1, 8, "none"), (2, 2, 2, "zero1"), (4, 2, 1, "none"), (2, 1, 4, "zero3")} <= got
    assert (1, 8, 1) in skipped  # 4 layers cannot fill 8 stages


def megatron_tflops(seconds, B, s, L, h, V, gpus):
    """Narayanan et al. 2021 (eq. 3): FLOPs per iteration with activation recomputation."""
    flops = 96 * B * s * L * h * h * (1 + s / (6 * h) + V / (16 * L * h))
    return flops / seconds / gpus / 1e12


def test_gpt3_175b_on_1024_a100_near_megatron():
    """Megatron-LM's GPT-3 175B row (Narayanan et al. 2021, Table 1): TP8 x PP16 x DP8 on 1024
    A100-80GB, batch 1536 x 2048, recomputation: 138 TFLOP/s per GPU. Our estimate within 20%."""
    cfg = resolve_model_config(ModelConfig(vocab_size=51200, hidden_size=12288, num_layers=96,
                                           num_heads=96))
    r = load_recipe(None, ["model.vocab_size=51200", "model.hidden_size=12288",
                           "model.num_layers=96", "model.num_heads=96", "data.seq_length=2048",
                           "train.micro_batch_size=1", "train.global_batch_size=1536",
                           "precision.dtype=fp16", "parallel.recompute=full"])
    plan = plan_layout(r, 8, 16, 8, "none", GPUS["a100-80gb"])
    got = megatron_tflops(plan.time.seconds, 1536, 2048, 96, 12288, 51200, 1024)
    assert got == pytest.approx(138, rel=0.2)
    direct = step_time(cfg, gpu=GPUS["a100-80gb"], gpus_per_node=8, tp=8, pp=16, dp=8,
                       virtual=1, shard="none", recompute="full", sp=False, seq=2048, micro=1,
                       global_batch=1536, w=2, params_per_rank=plan.params_per_gpu,
                       activation_bytes_per_micro=0)
    assert direct.compute == pytest.approx(plan.time.compute)


def test_show_prints_every_buffer_and_phase(capsys):
    argv = ["recipes/opt-iml-175b.yaml", "--gpus", "128", "--gpu", "a100-40gb", "--top", "1",
            "--show", "8x16x1:none"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    r = load_recipe("recipes/opt-iml-175b.yaml", [])
    n = local_params(r.model, 8, 16, 0)
    assert f"{n:,} parameters" in out
    # fp16 gradients upcast to fp32 for the step: 4 bytes per parameter on the 16 held
    assert f"fp32 gradients {4 * n / 2**30:.2f}" in out
    save = next(line for line in out.splitlines() if line.startswith("  checkpoint save"))
    assert f"{16 * n / 2**30:.2f} GiB in all (nothing more)" in save  # local slices, no copy


def test_show_refuses_a_layout_not_planned():
    from optiml_engine.errors import OptimlError

    with pytest.raises(OptimlError, match="not among the layouts"):
        main(["recipes/opt-iml-175b.yaml", "--gpus", "128", "--show", "8x16x2:none"])


def test_step_time_by_hand():
    """2 layers, h 64, f 256, V 128, s 32, 8 samples, tp 2 x dp 2 (no PP), recompute full."""
    cfg = resolve_model_config(ModelConfig(vocab_size=128, hidden_size=64, num_layers=2,
                                           num_heads=4, max_position_embeddings=64))
    gpu = GPUS["h100"]
    t = step_time(cfg, gpu=gpu, gpus_per_node=8, tp=2, pp=1, dp=2, virtual=1, shard="zero1",
                  recompute="full", sp=True, seq=32, micro=2, global_batch=8, w=2,
                  params_per_rank=1000, activation_bytes_per_micro=5000)
    tokens, pairs = 8 * 32, 8 * 32 * 33 // 2
    layers = 6 * 2 * (4 * 64 * 64 + 2 * 64 * 256) * tokens + 12 * 2 * 64 * pairs
    output = 6 * 64 * 128 * tokens
    assert t.needed_flops == layers + output
    rate = 989e12 * 0.7
    assert t.compute == pytest.approx((layers * 4 / 3 + output) / 4 / rate)
    m = 8 // (2 * 2)  # micro-batches per replica
    assert t.elementwise == pytest.approx(m * 4 * 5000 / 3350e9)
    # 6 ring all-reduces of T h w = 2*32*64*2 bytes per layer and micro-batch over 2 ranks
    assert t.tensor_parallel == pytest.approx(m * 2 * 6 * (2 * 1 / 2 * 8192 / 370e9))
    assert t.pipeline == 0.0
    # zero1: reduce-scatter of fp32 gradients + all-gather of fp16 weights, inside the node
    assert t.data_parallel == pytest.approx((1 / 2 * 4000 + 1 / 2 * 2000) / 370e9)
    assert t.tokens_per_s == pytest.approx(tokens / t.seconds)
