"""The activation formula (planner/activations.py) against what autograd actually saves: one
rank of every layout up to 8 ranks, built and run in this process under a fake process group,
its saved tensors counted through saved-tensor hooks (tests/planner/saved_bytes.py)."""

import pytest
from saved_bytes import stage_forward_bytes, step_peak_bytes, tiny

from optiml_engine.config import resolve_model_config
from optiml_engine.planner import activations as act

B, S = 2, 16


def _layouts():
    for tp in (1, 2, 4, 8):
        for pp in (1, 2, 4, 8):
            if tp * pp > 8:
                continue
            for sp in ((False, True) if tp > 1 else (False,)):
                for recompute in ("none", "full"):
                    yield tp, pp, sp, recompute


def _shape(cfg, tp, sp, b=B, s=S):
    return act.Shape(s, b, cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_heads, cfg.vocab_size,
                     cfg.word_embed_proj_dim, tp, sp and tp > 1, cfg.dropout > 0)


@pytest.mark.parametrize("tp, pp, sp, recompute", list(_layouts()))
def test_micro_batch_bytes_equal_saved_tensors(monkeypatch, tp, pp, sp, recompute):
    cfg = resolve_model_config(tiny())
    for rank in sorted({0, (pp - 1) * tp}):  # first and last stage, tensor-parallel rank 0
        measured = stage_forward_bytes(monkeypatch, cfg, tp, pp, sp, recompute, rank)
        stage = rank // tp
        formula = act.micro_batch_bytes(_shape(cfg, tp, sp), act.ElementSizes.of(2, "cpu"),
                                        cfg.num_layers // pp, stage == 0, stage == pp - 1,
                                        recompute, chunk_tokens=4096)
        assert formula == measured, (tp, pp, sp, recompute, rank)


@pytest.mark.parametrize("dtype, w", [("fp32", 4), ("bf16", 2)])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_dtype_and_dropout(monkeypatch, dtype, w, dropout):
    cfg = resolve_model_config(tiny(dropout=dropout))
    measured = stage_forward_bytes(monkeypatch, cfg, 2, 1, True, "none", 0, dtype=dtype)
    formula = act.micro_batch_bytes(_shape(cfg, 2, True), act.ElementSizes.of(w, "cpu"),
                                    cfg.num_layers, True, True, "none", 4096)
    assert formula == measured


def test_layer_bytes_by_hand():
    """One layer, T = 32 tokens, h = 64, f = 128, 8 heads, tp 2 with SP, bf16 on CUDA sizes."""
    x = act.Shape(16, 2, 64, 128, 8, 64, 64, 2, True, True)
    T, h = 32, 64
    layer_norms = 2 * (T * h * 2 // 2 + 2 * T * 4 // 2)
    gathered_inputs = 2 * T * h * 2  # qkv and fc1 keep the full sequence
    attention = 4 * T * h * 2 // 2 + 2 * 4 * 16 * 4  # q k v out, lse of 4 local heads
    relu = T * 128 * 2 // 2
    masks = 2 * T * h // 2
    expected = layer_norms + gathered_inputs + attention + relu + masks
    assert act.layer_bytes(x, act.ElementSizes.of(2, "cuda")) == expected == 27392


@pytest.mark.parametrize("pp, virtual, rank, micro", [
    (2, 1, 0, 4), (4, 1, 0, 6), (4, 1, 2, 6), (4, 1, 3, 6), (2, 2, 0, 4), (2, 2, 1, 4),
    (4, 2, 0, 8)])
def test_schedule_peak_equals_measured(monkeypatch, pp, virtual, rank, micro):
    """The activations alive at once over a whole train_step (1F1B and interleaved)."""
    cfg = resolve_model_config(tiny())
    measured = step_peak_bytes(monkeypatch, cfg, 1, pp, virtual, rank, micro, b=1)
    formula = act.peak_bytes(_shape(cfg, 1, False, b=1), act.ElementSizes.of(2, "cpu"), cfg,
                             pp, rank, micro, virtual, "none", 4096)
    assert formula == measured


def test_in_flight_1f1b_by_hand():
    assert [act.in_flight(4, r, 8) for r in range(4)] == [4, 3, 2, 1]
    assert act.in_flight(4, 0, 2) == 2
