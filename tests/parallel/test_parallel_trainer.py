"""The trainer under a parallel layout (its data pipeline, loader slicing, LR schedule, step)
logs the same losses as the same trainer on one process, resumes a parallel checkpoint in one
process, and, with dropout 0.1, a run of 6 steps equals 3 + resume + 3 bit for bit under TP2
and PP2 and ZeRO-3 over 4 ranks (RNG streams and data position restored per rank)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402
import trainer_worker  # noqa: E402

from optiml_engine.config import load_recipe  # noqa: E402

RESUMED = {"tp2": ["parallel.tp=2"], "pp2": ["parallel.pp=2"],
           "dp4zero3": ["parallel.shard=zero3"]}  # saved from and resumed into ZeRO-3 slices
RECIPE = """
model: {vocab_size: 264, hidden_size: 32, num_layers: 4, num_heads: 4, ffn_hidden_size: 64,
        max_position_embeddings: 64, dropout: 0.0}
data: {synthetic: true, synthetic_examples: 64, tokenizer: byte, seq_length: 64}
optim: {lr: 1.0e-3, warmup_steps: 2, clip_grad: 1.0}
train: {steps: 4, seed: 3, micro_batch_size: 2, global_batch_size: 8}
logging: {interval: 100}
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_parallel_trainer_matches_single_process_trainer(tmp_path):
    pytest.importorskip("optiml_engine._C")
    from optiml_engine.training.trainer import Trainer

    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    runs = {
        "tp2pp2sp": ["parallel.tp=2", "parallel.pp=2", "parallel.sp=true",
                     f"checkpoint.dir={tmp_path / 'ck'}", "checkpoint.interval=2"],
        "pp2dp2zero": ["parallel.pp=2", "parallel.shard=zero1"],
        "pp2dp2zero3": ["parallel.pp=2", "parallel.shard=zero3"],
    }
    for name, layout in RESUMED.items():
        common = [*layout, "model.dropout=0.1", "model.attention_dropout=0.1", "train.steps=6"]
        ck = f"checkpoint.dir={tmp_path / ('ck-' + name)}"
        runs[f"{name}-straight"] = common
        runs[f"{name}-first-half"] = [*common, ck, "train.stop_after=3"]
        runs[f"{name}-resumed"] = [*common, ck, "checkpoint.load=latest"]
    harness.spawn(trainer_worker.worker, 4, str(path), runs, str(tmp_path))
    reference = Trainer(load_recipe(path), verbose=False).fit()
    want = [m["loss"] for m in reference]
    for rank in range(4):
        got = json.loads((tmp_path / f"trainer{rank}.json").read_text())
        for name in ("tp2pp2sp", "pp2dp2zero", "pp2dp2zero3"):
            losses = [m["loss"] for m in got[name]]
            assert max(abs(a - b) / b for a, b in zip(losses, want, strict=True)) < 1e-5, name
        for name in RESUMED:  # bit for bit, with dropout on
            straight = [m["loss"] for m in got[f"{name}-straight"]]
            halves = [m["loss"] for m in got[f"{name}-first-half"] + got[f"{name}-resumed"]]
            assert halves == straight, name
        # Dropout is on: the two layouts draw different masks, so their losses differ.
        assert got["tp2-straight"][-1]["loss"] != got["pp2-straight"][-1]["loss"]
    # Resume the TP2 x PP2 checkpoint of step 2 in one process: steps 3 and 4 are the same.
    trainer = Trainer(load_recipe(path, [
        f"checkpoint.dir={tmp_path / 'ck2'}", f"checkpoint.load={tmp_path / 'ck' / 'step_0000002'}",
    ]), verbose=False)
    assert trainer.engine.init_stats.sources == ["EmptyInit"]  # no random init on resume
    resumed = trainer.fit()
    assert len(resumed) == 2
    for got, ref in zip(resumed, reference[2:], strict=True):
        assert abs(got["loss"] - ref["loss"]) / ref["loss"] < 1e-5


@pytest.mark.slow
def test_trainer_takes_its_kernels_from_the_dispatcher(tmp_path, monkeypatch, capsys):
    """The recipe's kernels section is adopted and logged once at start, and a step runs the
    loss and the optimizer through the kernels' entry points (one adamw_step per weight-decay
    group; the engine's loss is kernels.lm_loss_sum, chunked as the recipe says)."""
    pytest.importorskip("optiml_engine._C")
    from optiml_engine.kernels import dispatch
    from optiml_engine.optim import zero1
    from optiml_engine.training import engine
    from optiml_engine.training.trainer import Trainer

    monkeypatch.setattr(dispatch, "_defaults", dict(dispatch._defaults))
    monkeypatch.setattr(dispatch, "_logged", set())
    calls = {"adamw": [], "ce": 0}

    def spy_adamw(*args, **kw):
        calls["adamw"].append(kw["weight_decay"])
        return adamw_step(*args, **kw)

    def spy_ce(*args, **kw):
        calls["ce"] += 1
        assert args[4] == recipe.kernels.loss_chunk_tokens
        return lm_loss(*args, **kw)

    adamw_step, lm_loss = zero1.adamw_step, engine.lm_loss_sum
    monkeypatch.setattr(zero1, "adamw_step", spy_adamw)
    monkeypatch.setattr(engine, "lm_loss_sum", spy_ce)
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    recipe = load_recipe(path, ["train.steps=1", "kernels.cross_entropy=torch"])
    Trainer(recipe, verbose=True).fit()
    want = dispatch.resolve_all(recipe.kernels, "cuda" if torch.cuda.is_available() else "cpu")
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("kernels: ")]
    assert lines == ["kernels: " + ", ".join(f"{k} {v}" for k, v in want.items())]
    assert dispatch.requested_backend("cross_entropy", None) == "torch"
    assert sorted(calls["adamw"]) == [0.0, recipe.optim.weight_decay]  # one step, two groups
    assert calls["ce"] == 4  # 8 samples in micro-batches of 2
