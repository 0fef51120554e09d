"""Resharding on load (saved under one layout, loaded under others and in one process: the
next three steps' losses are the same, so the Adam moments came along) and fp16 loss scaling
(a planted inf on one rank skips the step on every rank and leaves the weights unchanged), on
real gloo processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import ckpt_worker  # noqa: E402
import harness  # noqa: E402

from optiml_engine.distributed.checkpoint import load_weights  # noqa: E402

WORLD = 4
SAVES = {
    "tp2pp2sp": dict(tp=2, pp=2, dp=1, sp=True),
    "pp2dp2zero": dict(tp=1, pp=2, dp=2, shard="zero1"),
    "tp2dp2zero3": dict(tp=2, pp=1, dp=2, sp=True, shard="zero3"),
}
LOADS = {
    "tp4-from-tp2pp2": (dict(tp=4, pp=1, dp=1), "tp2pp2sp"),
    "pp2dp2zero-from-tp2pp2": (dict(tp=1, pp=2, dp=2, shard="zero1"), "tp2pp2sp"),
    "tp2dp2-from-pp2dp2zero": (dict(tp=2, pp=1, dp=2, sp=True), "pp2dp2zero"),
    # Written from ZeRO-3 slices, read into other slices, whole tensors, or ZeRO-3 again.
    "pp2dp2zero3-from-tp2pp2": (dict(tp=1, pp=2, dp=2, shard="zero3"), "tp2pp2sp"),
    "tp2pp2-from-tp2dp2zero3": (dict(tp=2, pp=2, dp=1, sp=True), "tp2dp2zero3"),
    "dp4zero1-from-tp2dp2zero3": (dict(tp=1, pp=1, dp=4, shard="zero1"), "tp2dp2zero3"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    steps = harness.make_steps(6, 8, seed=1)
    harness.spawn(ckpt_worker.reshard_worker, WORLD, steps, str(tmp), SAVES, LOADS)
    harness.spawn(ckpt_worker.scaler_worker, WORLD, steps, str(tmp))
    reshard = {}
    for r in range(WORLD):
        for key, loss in json.loads((tmp / f"reshard{r}.json").read_text()).items():
            reshard.setdefault(key, []).append(loss)
    scaler = [json.loads((tmp / f"scaler{r}.json").read_text()) for r in range(WORLD)]
    return tmp, steps, reshard, scaler


def close(got: list[float], want: list[float]) -> bool:
    return max(abs(a - b) / b for a, b in zip(got, want, strict=True)) < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_reshard_on_load_gives_the_same_next_losses(runs):
    tmp, steps, reshard, _ = runs
    after = steps[-ckpt_worker.AFTER:]
    expected = reshard["save-tp2pp2sp"][0]
    assert len(expected) == 3
    assert all(losses == expected for losses in reshard["save-tp2pp2sp"])  # on every rank
    for name in ("tp4-from-tp2pp2", "pp2dp2zero-from-tp2pp2", "pp2dp2zero3-from-tp2pp2"):
        assert len(reshard[f"load-{name}"]) == WORLD
        for losses in reshard[f"load-{name}"]:
            assert close(losses, expected), name
    zero_expected = reshard["save-pp2dp2zero"][0]
    for losses in reshard["load-tp2dp2-from-pp2dp2zero"]:
        assert close(losses, zero_expected)
    zero3_expected = reshard["save-tp2dp2zero3"][0]
    for name in ("tp2pp2-from-tp2dp2zero3", "dp4zero1-from-tp2dp2zero3"):
        assert len(reshard[f"load-{name}"]) == WORLD
        for losses in reshard[f"load-{name}"]:
            assert close(losses, zero3_expected), name
    one = ckpt_worker.Engine(
        harness.OPTForCausalLM(harness.tiny_config()), harness.parallel_config(),
        harness.optim_config(), harness.precision_config(), harness.SEED)
    one.load(tmp / "tp2dp2zero3")  # ZeRO-3 slices into one process
    assert close([ckpt_worker.step(one, b)["loss"] for b in after], zero3_expected)
    # ...and in one process without any process group (TP=1, PP=1).
    engine = ckpt_worker.Engine(
        harness.OPTForCausalLM(harness.tiny_config()), harness.parallel_config(),
        harness.optim_config(), harness.precision_config(), harness.SEED)
    engine.load(tmp / "tp2pp2sp")
    assert close([ckpt_worker.step(engine, b)["loss"] for b in after], expected)
    # Fresh moments instead of the saved ones change the 2nd and 3rd step: the check can fail.
    fresh = ckpt_worker.Engine(
        harness.OPTForCausalLM(harness.tiny_config()), harness.parallel_config(),
        harness.optim_config(), harness.precision_config(), harness.SEED)
    load_weights(fresh.model, tmp / "tp2pp2sp")
    fresh.optimizer.load_param_states(
        [{"master": p.detach().float(), "exp_avg": torch.zeros_like(p),
          "exp_avg_sq": torch.zeros_like(p)} for p in fresh.model.parameters()], 0)
    assert not close([ckpt_worker.step(fresh, b)["loss"] for b in after], expected)
    # The checkpoint's weights also load into a plain model, as engine2hf / eval do.
    plain = harness.OPTForCausalLM(harness.tiny_config())
    load_weights(plain, tmp / "tp2pp2sp")
    engine2 = ckpt_worker.Engine(
        harness.OPTForCausalLM(harness.tiny_config()), harness.parallel_config(),
        harness.optim_config(), harness.precision_config(), harness.SEED)
    engine2.load(tmp / "tp2pp2sp")
    for (name, p), q in zip(engine2.model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_planted_inf_skips_the_step_on_every_rank(runs):
    *_, scaler = runs
    for res in scaler:
        assert res["first"]["skipped"] == 1.0
        assert res["unchanged"]
        assert res["first"]["loss_scale"] == 512.0  # hysteresis 1: halved at once
        assert res["second"]["skipped"] == 0.0
        assert res["changed"]
    # The loss of the skipped step is still reported, and identically everywhere.
    assert len({res["first"]["loss"] for res in scaler}) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hf2engine_sharded_conversion_matches_from_hf(tmp_path):
    from optiml_engine.model import OPTForCausalLM
    from optiml_engine.model.hf_shards import hf_to_engine_sharded

    layouts = ["pre_ln", "post_ln_projected"]  # 350M's post-LN with project_in/out
    for layout in layouts:
        harness.tiny_hf(tmp_path / layout, layout)
    harness.spawn(ckpt_worker.convert_worker, WORLD,
                  [(str(tmp_path / lay), str(tmp_path / f"{lay}-tp2pp2")) for lay in layouts])
    for layout in layouts:
        want = OPTForCausalLM.from_hf(tmp_path / layout)
        hf_to_engine_sharded(tmp_path / layout, tmp_path / f"{layout}-tp1")  # one process
        for ckpt in (f"{layout}-tp2pp2", f"{layout}-tp1"):
            got = OPTForCausalLM(want.config)
            load_weights(got, tmp_path / ckpt)
            for (name, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
                torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{ckpt} {name}")
