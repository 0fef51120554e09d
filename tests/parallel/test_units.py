"""Single-process checks of the parallel building blocks against plain-torch references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optiml_engine.distributed import state
from optiml_engine.distributed.interleaved import chunk_layer_ranges, interleaved_order
from optiml_engine.distributed.pipeline import stage_layer_range
from optiml_engine.distributed.random import checkpoint, get_rng_tracker, model_parallel_seed
from optiml_engine.errors import OptimlError
from optiml_engine.kernels.lm_loss import lm_loss_sum
from optiml_engine.optim.clip import clip_grad_norm_
from optiml_engine.optim.loss_scaler import DynamicLossScaler
from optiml_engine.optim.zero1 import FlatAdamW
from optiml_engine.training.engine import tp_all_reduces


def test_grid_rank_layout_tp_fastest_then_dp_then_pp():
    lists = state._group_lists(tp=2, dp=2, pp=2)
    assert lists["tp"][0] == [0, 1] and lists["dp"][0] == [0, 2] and lists["pp"][0] == [0, 4]
    assert lists["embed"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert sorted(r for g in lists["tp"] for r in g) == list(range(8))
    g = state.grid()  # no initialisation and no process group: one rank
    assert (g.tp, g.dp, g.pp, state.tp_rank(), state.is_first_stage(), state.is_last_stage()) == \
        (1, 1, 1, 0, True, True)
    assert state.tp_group() is None and state.world_group() is None


def test_stage_layer_ranges_cover_every_layer_once():
    ranges = [stage_layer_range(10, 4, s) for s in range(4)]
    assert [list(r) for r in ranges] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


@pytest.mark.parametrize("chunk", [0, 3])
def test_engine_loss_on_one_rank_equals_the_reference(chunk):
    """The engine's loss (kernels.lm_loss_sum with the engine's tensor-parallel reductions,
    none on one rank; full logits or chunks of 3 target tokens) against plain F.cross_entropy."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 7, requires_grad=True)
    weight = torch.randn(11, 7, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5))
    mask = (torch.rand(2, 5) < 0.6).float()
    got = lm_loss_sum(hidden, weight, targets, mask, chunk, 0, *tp_all_reduces(None))
    g_got = torch.autograd.grad(got, (hidden, weight))
    ce = nn.functional.cross_entropy((hidden @ weight.T).reshape(-1, 11), targets.reshape(-1),
                                     reduction="none")
    want = (ce * mask.reshape(-1)).sum()
    g_want = torch.autograd.grad(want, (hidden, weight))
    torch.testing.assert_close(got, want.to(got.dtype))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)


def test_loss_scaler_backoff_hysteresis_growth_and_abort():
    s = DynamicLossScaler(initial_scale=8.0, growth_interval=2, hysteresis=2, max_skipped=3)
    assert s.update(True) and s.scale == 8.0  # first overflow absorbed by hysteresis
    assert s.update(True) and s.scale == 4.0
    assert not s.update(False) and not s.update(False) and s.scale == 8.0  # grows after 2 clean
    assert s.update(True) and s.scale == 8.0  # hysteresis was restored by the growth
    s.update(True)
    with pytest.raises(OptimlError, match="consecutive steps had inf/NaN"):
        s.update(True)


def test_recompute_replays_both_rng_streams():
    model_parallel_seed(7, tp_rank=0, tp=2)
    lin = nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)

    def block(t):
        t = nn.functional.dropout(lin(t), 0.5)  # default stream
        with get_rng_tracker().fork():  # tensor-parallel stream
            return nn.functional.dropout(t, 0.5)

    saved = (torch.get_rng_state(), get_rng_tracker().get_states())
    block(x).sum().backward()
    plain = (x.grad.clone(), lin.weight.grad.clone())
    x.grad, lin.weight.grad = None, None
    torch.set_rng_state(saved[0])
    get_rng_tracker().set_states(saved[1])
    checkpoint(block, x).sum().backward()
    torch.testing.assert_close(x.grad, plain[0], rtol=0, atol=0)
    torch.testing.assert_close(lin.weight.grad, plain[1], rtol=0, atol=0)
    get_rng_tracker().reset()


def test_flat_adamw_and_clip_match_torch():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    mine = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    mine.load_state_dict(ref.state_dict())
    decay = [p for p in ref.parameters() if p.ndim >= 2]
    no_decay = [p for p in ref.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-2,
                            betas=(0.9, 0.95), eps=1e-8, foreach=True)
    flat = FlatAdamW(mine.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        x = torch.randn(4, 6)
        for m in (ref, mine):
            m.zero_grad()
            (m(x) ** 2).sum().backward()
        grads = [p.grad.clone() for p in mine.parameters()]
        want = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
        out = flat.step(max_norm=0.5)
        assert abs(out["grad_norm"] - float(want)) < 1e-6 * float(want)
        for p, g in zip(mine.parameters(), grads, strict=True):
            p.grad = g
        assert abs(float(clip_grad_norm_(mine.parameters(), 0.0)) - float(want)) < 1e-5
    for p, q in zip(ref.parameters(), mine.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_flat_adamw_norm_counts_only_the_counted_params_and_still_steps_the_others():
    """count_weights drops parameters counted on another rank from the norm; count_here=False
    (a data-parallel replica but the first, without ZeRO) drops all of them. Either way every
    parameter takes the same AdamW step (no clipping here)."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5)) for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    counts = [True, False, True, False]  # weight, bias, ln weight, ln bias
    opts = [FlatAdamW(models[0].parameters(), lr=1e-2, weight_decay=0.1),
            FlatAdamW(models[1].parameters(), lr=1e-2, weight_decay=0.1, count_weights=counts),
            FlatAdamW(models[2].parameters(), lr=1e-2, weight_decay=0.1, count_here=False)]
    x = torch.randn(4, 6)
    for m in models:
        (m(x) ** 2).sum().backward()
    grads = [p.grad.clone() for p in models[0].parameters()]
    norms = [o.step()["grad_norm"] for o in opts]
    want = [torch.cat([g.reshape(-1) for g, c in zip(grads, cs, strict=True) if c]).norm()
            for cs in ([True] * 4, counts)]
    assert abs(norms[0] - float(want[0])) < 1e-6 * float(want[0])
    assert abs(norms[1] - float(want[1])) < 1e-6 * float(want[1])
    assert norms[2] == 0.0
    for m in models[1:]:
        for p, q in zip(models[0].parameters(), m.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)

def test_interleaved_order_runs_every_task_once_forward_first():
    pp, v, micro = 2, 3, 4
    layers = sorted(i for r in range(pp) for c in chunk_layer_ranges(12, pp, v, r) for i in c)
    assert layers == list(range(12))
    assert list(chunk_layer_ranges(12, pp, v, 1)[0]) == [2, 3]  # rank 1 runs stages 1, 3, 5
    for rank in range(pp):
        order = interleaved_order(micro, pp, v, rank)
        tasks = [(c, m) for c in range(v) for m in range(micro)]
        assert sorted((c, m) for k, c, m in order if k == "F") == tasks
        assert sorted((c, m) for k, c, m in order if k == "B") == tasks
        seen = set()
        for kind, c, m in order:
            assert kind == "F" or (c, m) in seen  # a backward follows its forward
            seen.add((c, m))
    # Megatron's warm-up of (pp - rank - 1) * 2 + (v - 1) * pp = 6 forwards, then F, B, F, B...
    assert [k for k, _, _ in interleaved_order(micro, pp, v, 0)][:9] == ["F"] * 7 + ["B", "F"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_weights_with_fp32_master_track_fp32(dtype):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import harness

    from optiml_engine.training.engine import Engine

    steps = harness.make_steps(4, 4)
    ref = harness.reference_run(steps, 2)
    torch.manual_seed(harness.SEED)
    engine = Engine(harness.OPTForCausalLM(harness.tiny_config()),
                            harness.parallel_config(), harness.optim_config(),
                            harness.precision_config(dtype, initial_loss_scale=2.0**12),
                            harness.SEED)
    want_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    assert all(p.dtype == want_dtype for p in engine.model.parameters())
    assert engine.optimizer.master.dtype == torch.float32
    opt = harness.optim_config()
    for step, want in zip(steps, ref["losses"], strict=True):
        out = engine.train_step(harness.micro_batches(step, 0, 1, 2), opt.lr, opt.clip_grad)
        assert out["skipped"] == 0.0
        assert abs(out["loss"] - want) / want < 5e-3  # half-precision activations
    assert out["loss_scale"] == (2.0**12 if dtype == "fp16" else 1.0)
