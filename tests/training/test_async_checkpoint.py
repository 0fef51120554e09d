"""checkpoint.async_save (issue 16 item 6): a checkpoint written in the background holds the
step's values bit for bit (the synchronous save's), resumes to the same losses, a write's failure
is raised, and a run killed while a write is pending keeps its previous checkpoint as `latest`.
The reference each time is the synchronous save (dcp.save on the caller's thread)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


def saved_tensors(path: Path, out: Path) -> dict:
    """Every tensor of a checkpoint, read back by DCP's own converter, and its RNG files."""
    dcp_to_torch_save(str(path), str(out))
    tensors = torch.load(out, weights_only=True)
    for f in sorted((path / "rng").glob("*.pt")):
        tensors[f"rng/{f.name}"] = torch.load(f, weights_only=True)
    return tensors


def assert_same(a: dict, b: dict, prefix=""):
    assert a.keys() == b.keys(), prefix
    for k in a:
        if isinstance(a[k], dict):
            assert_same(a[k], b[k], f"{prefix}{k}.")
        else:
            assert torch.equal(a[k], b[k]), f"{prefix}{k}"


@pytest.fixture
def gated_writer(monkeypatch):
    """Background writes (not the caller's thread) wait for `gate`; `entered` is set when one
    is waiting. fail=True makes them raise instead of writing."""
    gate, entered, opts = threading.Event(), threading.Event(), {"fail": False}
    write = FileSystemWriter.write_data

    def gated(self, plan, planner):
        if threading.current_thread() is not threading.main_thread():
            entered.set()
            assert gate.wait(60), "the test never opened the gate"
            if opts["fail"]:
                raise OSError("No space left on device")
        return write(self, plan, planner)

    monkeypatch.setattr(FileSystemWriter, "write_data", gated)
    return gate, entered, opts


def test_async_checkpoints_are_the_synchronous_ones_and_resume_alike(tiny_recipe, tmp_path):
    common = ["train.steps=4", "checkpoint.interval=2", "model.dropout=0.1"]
    sync = Trainer(tiny_recipe(*common, f"checkpoint.dir={tmp_path / 'sync'}"), verbose=False)
    sync_losses = [m["loss"] for m in sync.fit()]
    ck = f"checkpoint.dir={tmp_path / 'async'}"
    asynchronous = Trainer(tiny_recipe(*common, ck, "checkpoint.async_save=true"), verbose=False)
    assert [m["loss"] for m in asynchronous.fit()] == sync_losses
    for step in ("step_0000002", "step_0000004"):
        assert_same(saved_tensors(tmp_path / "async" / step, tmp_path / "a.pt"),
                    saved_tensors(tmp_path / "sync" / step, tmp_path / "s.pt"))
        assert ckpt.corruption(tmp_path / "async" / step) is None
    resumed = Trainer(tiny_recipe(*common, ck, "checkpoint.async_save=true",
                                  f"checkpoint.load={tmp_path / 'async' / 'step_0000002'}"),
                      verbose=False)
    assert resumed.step == 2
    assert [m["loss"] for m in resumed.fit()] == sync_losses[2:]


def test_the_saved_values_are_the_steps_while_training_goes_on(tiny_recipe, tmp_path,
                                                               gated_writer):
    gate, entered, _ = gated_writer
    trainer = Trainer(tiny_recipe("train.steps=4", f"checkpoint.dir={tmp_path / 'run'}",
                                  "checkpoint.async_save=true"), verbose=False)
    try:
        trainer.train_step()
        trainer.train_step()
        reference = ckpt.save(tmp_path / "sync", trainer.engine.tensors(), {"step": 2})
        trainer.save()
        assert entered.wait(60)
        at_two = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train_step()  # Adam changes the weights and moments in place meanwhile
        trainer.train_step()
        assert not torch.equal(trainer.model.state_dict()["decoder.final_layer_norm.weight"],
                               at_two["decoder.final_layer_norm.weight"])
        gate.set()
        trainer.wait_for_save()
    finally:
        gate.set()
        trainer.close()
    assert_same(saved_tensors(tmp_path / "run" / "step_0000002", tmp_path / "a.pt"),
                saved_tensors(reference, tmp_path / "s.pt"))


def test_a_failed_background_write_is_raised_and_latest_stays(tiny_recipe, tmp_path,
                                                             gated_writer):
    gate, entered, opts = gated_writer
    gate.set()
    common = ["train.steps=4", "checkpoint.interval=1", f"checkpoint.dir={tmp_path}",
              "checkpoint.async_save=true"]
    trainer = Trainer(tiny_recipe(*common), verbose=False)
    trainer.train_step()
    trainer.save()
    trainer.wait_for_save()
    gate.clear()
    entered.clear()
    trainer.train_step()
    trainer.save()  # step 2: pending, its writer held at the gate
    assert entered.wait(60)
    assert ckpt.latest_checkpoint(tmp_path, verify=True) == tmp_path / "step_0000001"
    opts["fail"] = True
    gate.set()
    with pytest.raises(BaseException, match="No space left on device"):
        trainer.close()  # the failure is raised by the wait before the lock is given back
    assert trainer.lock is None
    assert ckpt.latest_checkpoint(tmp_path, verify=True) == tmp_path / "step_0000001"
    assert not ckpt.is_complete(tmp_path / "step_0000002")


KILLED_RUN = """
import sys, threading, time
from pathlib import Path
from torch.distributed.checkpoint import FileSystemWriter
from optiml_engine.config import load_recipe
from optiml_engine.training.trainer import Trainer

write, marker = FileSystemWriter.write_data, Path(sys.argv[1])
def stuck(self, plan, planner):  # the second background write never ends: killed meanwhile
    background = threading.current_thread() is not threading.main_thread()
    if background and "step_0000002" in str(self.path):
        marker.write_text("writing")
        time.sleep(600)
    return write(self, plan, planner)
FileSystemWriter.write_data = stuck
Trainer(load_recipe(sys.argv[2]), verbose=False).fit()
"""


def test_a_run_killed_during_an_async_save_resumes_from_the_previous_one(tiny_recipe, tmp_path):
    common = ["train.steps=3", "checkpoint.interval=1", f"checkpoint.dir={tmp_path / 'ck'}"]
    recipe, marker = tmp_path / "recipe.yaml", tmp_path / "marker"
    recipe.write_text(tiny_recipe(*common, "checkpoint.async_save=true").to_yaml())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(marker), str(recipe)],
                             env=env, cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the second save never started"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert ckpt.latest_checkpoint(tmp_path / "ck", verify=True) == tmp_path / "ck" / \
        "step_0000001"
    resumed = Trainer(tiny_recipe(*common, "checkpoint.load=latest"), verbose=False)
    resumed.close()
    assert resumed.step == 1
    reference = Trainer(tiny_recipe("train.steps=3", "train.stop_after=1"), verbose=False)
    reference.fit()
    for k, v in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


TWO_RANKS = """
model: {vocab_size: 264, hidden_size: 32, num_layers: 2, num_heads: 4, ffn_hidden_size: 64,
        max_position_embeddings: 64, dropout: 0.1}
data: {synthetic: true, synthetic_examples: 64, tokenizer: byte, seq_length: 64}
optim: {lr: 1.0e-3, warmup_steps: 1}
train: {steps: 3, seed: 3, micro_batch_size: 2, global_batch_size: 8}
checkpoint: {interval: 2}
logging: {interval: 100}
"""


@pytest.mark.timeout(300)
def test_two_gloo_ranks_write_the_synchronous_checkpoints_in_the_background(tmp_path):
    """TP2 (DTensor slices) and DP2 ZeRO-1 (flat runs of the optimizer state): the background
    write's own process group, the copies of both kinds of tensors."""
    sys.path.insert(0, str(REPO / "tests" / "parallel"))
    import harness
    import trainer_worker

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TWO_RANKS)
    layouts = {"tp2": ["parallel.tp=2"], "zero1": ["parallel.shard=zero1"]}
    runs = {f"{name}-{mode}": [*extra, f"checkpoint.dir={tmp_path / name / mode}",
                               f"checkpoint.async_save={str(mode == 'async').lower()}"]
            for name, extra in layouts.items() for mode in ("sync", "async")}
    harness.spawn(trainer_worker.worker, 2, str(recipe), runs, str(tmp_path))
    losses = json.loads((tmp_path / "trainer0.json").read_text())
    for name in layouts:
        assert [m["loss"] for m in losses[f"{name}-async"]] == \
            [m["loss"] for m in losses[f"{name}-sync"]]
        for step in ("step_0000002", "step_0000003"):
            async_dir, sync_dir = (tmp_path / name / m / step for m in ("async", "sync"))
            assert ckpt.corruption(async_dir) is None
            assert_same(saved_tensors(async_dir, tmp_path / "a.pt"),
                        saved_tensors(sync_dir, tmp_path / "s.pt"))


def test_the_finiteness_check_before_a_save_is_exact():
    """Its fast path (a finite sum) falls back to the elementwise test when the sum overflows."""
    from optiml_engine.distributed.integrity import non_finite

    big = torch.full((4,), 3e38)  # finite, but sums to inf in fp32
    assert not torch.isfinite(big.sum())
    assert non_finite({"a": big, "b": torch.ones(3)}, lambda t: t) is None
    for bad in (float("inf"), float("-inf"), float("nan")):
        t = torch.ones(5)
        t[3] = bad
        assert non_finite({"a": torch.ones(2), "b": {"c": t}}, lambda t: t) == "b.c"
    half = torch.full((8,), 60000.0, dtype=torch.float16)  # its sum overflows fp16
    assert non_finite({"h": half}, lambda t: t) is None
