"""One precision policy and one checkpoint format on one process: fp16 loss scaling with a
planted inf, divergence in fp32 that never reaches the weights or a checkpoint, rotation that
keeps the checkpoint just written and never touches another run's, the recipe next to each
checkpoint, and the earlier single-process format still loading with its Adam moments."""

import json

import pytest
import torch

from optiml_engine.config import load_recipe
from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.errors import OptimlError
from optiml_engine.optim.loss_scaler import DynamicLossScaler
from optiml_engine.training.trainer import Trainer


def test_fp16_planted_inf_skips_the_step_halves_the_scale_keeps_the_weights(tiny_recipe):
    trainer = Trainer(tiny_recipe("precision.dtype=fp16", "train.steps=3"), verbose=False)
    engine = trainer.engine
    assert next(engine.model.parameters()).dtype == torch.float16
    engine.scaler = DynamicLossScaler(initial_scale=1024.0, hysteresis=1)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    masters = engine.optimizer.master.clone()
    sync = engine.sync_grads

    def planted():
        sync()
        next(engine.model.parameters()).grad.view(-1)[0] = float("inf")

    engine.sync_grads = planted
    out = trainer.train_step()
    assert out["skipped"] == 1.0 and out["loss_scale"] == 512.0
    for n, p in engine.model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert torch.equal(engine.optimizer.master, masters)
    assert engine.optimizer.step_count == 0
    engine.sync_grads = sync
    out = trainer.train_step()
    assert out["skipped"] == 0.0 and engine.optimizer.step_count == 1
    assert any(not torch.equal(p, before[n]) for n, p in engine.model.named_parameters())


def test_bf16_on_one_process_keeps_fp32_masters(tiny_recipe):
    trainer = Trainer(tiny_recipe("precision.dtype=bf16", "train.steps=2"), verbose=False)
    history = trainer.fit()
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
    assert trainer.engine.optimizer.master.dtype == torch.float32
    # The weights are the fp32 masters rounded to bf16, not a separately drifting copy.
    flat = torch.cat([p.detach().float().reshape(-1) for p in trainer.model.parameters()])
    n = flat.numel()
    assert torch.equal(flat, trainer.engine.optimizer.master[:n].bfloat16().float())
    assert history[-1]["loss"] < history[0]["loss"] * 1.5


def test_divergence_skips_steps_aborts_and_never_saves_nan(tiny_recipe, tmp_path):
    recipe = tiny_recipe("optim.lr=1e6", "optim.warmup_steps=0", "train.steps=20",
                         "precision.max_skipped_steps=3", f"checkpoint.dir={tmp_path}",
                         "checkpoint.interval=1", "checkpoint.keep_last=20")
    trainer = Trainer(recipe, verbose=False)
    with pytest.raises(OptimlError, match="3 consecutive steps had inf/NaN gradients"):
        trainer.fit()
    skipped = [m["skipped"] for m in trainer.history]
    assert skipped[-2:] == [1.0, 1.0] and trainer.engine.scaler.total_skips == 3
    for p in trainer.model.parameters():
        assert torch.isfinite(p).all()
    saved = sorted(tmp_path.glob("step_*"))
    assert saved, "the steps before the abort were saved"
    for path in saved:
        model = Trainer(tiny_recipe(f"checkpoint.load={path}"), verbose=False).model
        for p in model.parameters():
            assert torch.isfinite(p).all(), path


def test_rotation_keeps_the_new_run_and_never_deletes_another_runs(tiny_recipe, tmp_path):
    old = Trainer(tiny_recipe("train.steps=20", "checkpoint.interval=10",
                              f"checkpoint.dir={tmp_path}"), verbose=False)
    old.fit()
    new = Trainer(tiny_recipe("train.steps=5", "checkpoint.interval=1", "checkpoint.keep_last=2",
                              f"checkpoint.dir={tmp_path}"), verbose=False)
    new.fit()
    names = sorted(p.name for p in tmp_path.glob("step_*"))
    # The other run's step_10 and step_20 stay; this run keeps its newest two.
    assert names == ["step_0000004", "step_0000005", "step_0000010", "step_0000020"]
    assert ckpt.read_meta(tmp_path / "step_0000005")["run"] == new.run_id != old.run_id


def test_recipe_yaml_next_to_each_checkpoint_and_in_the_log_dir(tiny_recipe, tmp_path):
    recipe = tiny_recipe("train.steps=2", f"checkpoint.dir={tmp_path / 'ck'}",
                         f"logging.dir={tmp_path / 'tb'}")
    Trainer(recipe, verbose=False).fit()
    for path in (tmp_path / "ck" / "step_0000002" / "recipe.yaml", tmp_path / "tb" / "recipe.yaml"):
        assert load_recipe(path).to_dict() == recipe.to_dict()


def test_unversioned_single_process_checkpoint_loads_with_its_moments(tiny_recipe, tmp_path):
    """The format the single-process trainer wrote before (DCP of get_state_dict(model, optim),
    no format key): weights and Adam moments come back, and training continues from them."""
    import torch.distributed.checkpoint as dcp

    trainer = Trainer(tiny_recipe("train.steps=4"), verbose=False)
    for _ in range(2):
        trainer.train_step()
    # What the old writer stored (get_state_dict(model, optimizer)): these tensors, these names.
    model_sd = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    states = trainer.engine.optimizer.param_states()
    optim_sd = {"state": {n: {"exp_avg": s["exp_avg"].clone(),
                              "exp_avg_sq": s["exp_avg_sq"].clone(), "step": torch.tensor(2.0)}
                          for (n, _), s in zip(trainer.model.named_parameters(), states,
                                               strict=True)}}
    old = tmp_path / "step_0000002"
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(old))
    (old / "meta.json").write_text(json.dumps({"kind": "train", "step": 2,
                                               "loader": trainer.loader.state_dict()}))
    want = [trainer.train_step()["loss"] for _ in range(2)]
    resumed = Trainer(tiny_recipe("train.steps=4", f"checkpoint.load={old}"), verbose=False)
    assert resumed.step == 2
    got = [m["loss"] for m in resumed.fit()]
    assert got == pytest.approx(want, rel=1e-6)
