"""A run owns its checkpoint directory, checkpoints are verified, `latest` falls back past a
corrupt one, leftovers of dead runs are cleaned, a diverged run ends with one line and exit 1
and never writes a non-finite checkpoint (issue "fault tolerance"), on real files."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.errors import Diverged, OptimlError
from optiml_engine.training.trainer import Trainer


def run(tiny_recipe, *overrides):
    """A trainer built (resumed, if asked) and closed: its lock is given back."""
    trainer = Trainer(tiny_recipe(*overrides), verbose=False)
    trainer.close()
    return trainer


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_a_second_live_run_is_refused_and_a_dead_ones_lock_taken_over(tiny_recipe, tmp_path):
    ck = f"checkpoint.dir={tmp_path}"
    (tmp_path / ".lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "run": "other"}))
    with pytest.raises(OptimlError, match=f"pid {os.getpid()}, run other"):
        run(tiny_recipe, ck)
    assert json.loads((tmp_path / ".lock").read_text())["run"] == "other"  # left as it was
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": dead.pid, "run": "gone"}))
    trainer = Trainer(tiny_recipe(ck, "train.steps=1"), verbose=False)
    assert json.loads((tmp_path / ".lock").read_text())["run"] == trainer.run_id
    trainer.fit()
    assert not (tmp_path / ".lock").exists()  # released at the end
    assert ckpt.is_complete(tmp_path / "step_0000001")


def test_checkpoint_dir_that_is_a_file_is_refused_before_training(tiny_recipe, tmp_path):
    (tmp_path / "ck").write_text("not a directory")
    with pytest.raises(OptimlError, match="is a file, not a directory"):
        run(tiny_recipe, f"checkpoint.dir={tmp_path / 'ck'}")


def flip(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[(i * 7919) % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_caught_and_latest_falls_back(tiny_recipe, tmp_path, capsys):
    common = ["train.steps=4", "checkpoint.interval=2", f"checkpoint.dir={tmp_path}"]
    first = run(tiny_recipe, *common, "train.stop_after=2")
    first.fit()
    at_two = weights(first)
    run(tiny_recipe, *common, "checkpoint.load=latest").fit()
    (distcp,) = (tmp_path / "step_0000004").glob("*.distcp")
    flip(distcp)
    explicit = [*common, f"checkpoint.load={tmp_path / 'step_0000004'}"]
    with pytest.raises(OptimlError, match=r"is corrupt: .*__0_0.distcp does not match"):
        run(tiny_recipe, *explicit)
    resumed = Trainer(tiny_recipe(*common, "checkpoint.load=latest"), verbose=True)
    resumed.close()
    assert resumed.step == 2
    assert "skipping checkpoint step_0000004" in capsys.readouterr().err
    for k, v in weights(resumed).items():
        assert torch.equal(v, at_two[k]), k
    # Without verification a truncated file is still one clean error, from DCP's reader:
    distcp.write_bytes(distcp.read_bytes()[:100])
    with pytest.raises(OptimlError, match="cannot be loaded"):
        run(tiny_recipe, *explicit, "checkpoint.verify=false")


@pytest.mark.parametrize(("victim", "verify"), [
    ("meta.json", True), (".metadata", True), (".metadata", False), ("rng/rank0.pt", True),
    ("rng/rank0.pt", False), ("__0_0.distcp", False)])
def test_each_corrupt_file_is_one_line_exit_2(tiny_recipe, tmp_path, victim, verify):
    """Checked against its checksum, or (verification off) read as it is: one line, exit 2."""
    recipe_file = tmp_path / "r.yaml"
    base = tiny_recipe()  # the fixture's overrides, written out as a file the CLI can read
    recipe_file.write_text(base.to_yaml())
    ck = tmp_path / "ck"
    Trainer(tiny_recipe("train.steps=1", f"checkpoint.dir={ck}"), verbose=False).fit()
    target = ck / "step_0000001" / victim
    target.write_bytes(b"\x00garbage\xff" * 3)
    out = subprocess.run([sys.executable, "-m", "optiml_engine", "train", str(recipe_file),
                          "train.steps=2", f"checkpoint.dir={ck}",
                          f"checkpoint.load={ck / 'step_0000001'}",
                          f"checkpoint.verify={str(verify).lower()}"],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("optiml: error: ") and "Traceback" not in out.stderr
    assert "step_0000001" in lines[-1]


def test_leftovers_of_dead_runs_are_cleaned_and_an_interrupted_replace_undone(
        tiny_recipe, tmp_path):
    ck = tmp_path / "ck"
    Trainer(tiny_recipe("train.steps=1", f"checkpoint.dir={ck}"), verbose=False).fit()
    (ck / "step_0000001").rename(ck / ".old-step_0000001")  # killed mid-replace
    for name in (".tmp-step_0000009", ".trash-step_0000003", "step_0000007"):
        (ck / name).mkdir()
        (ck / name / "__0_0.distcp").write_bytes(b"partial")
    resumed = run(tiny_recipe, f"checkpoint.dir={ck}", "checkpoint.load=latest")
    assert resumed.step == 1
    assert sorted(p.name for p in ck.iterdir()) == ["step_0000001"]


def test_a_step_on_disk_survives_a_resave_killed_at_its_last_rename(tiny_recipe, tmp_path,
                                                                     monkeypatch):
    """Re-saving a step that exists: killed when the new copy is complete but not yet in place,
    the old one is still on disk, and the next start puts it back."""
    trainer = Trainer(tiny_recipe("train.steps=1", f"checkpoint.dir={tmp_path}"), verbose=False)
    trainer.fit()
    before = weights(trainer)
    trainer.train_step()
    trainer.step = 1  # the same step name again
    rename = Path.rename

    def die_on_the_new_copy(self, target):
        if self.name.startswith(".tmp-"):
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", die_on_the_new_copy)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.undo()
    again = run(tiny_recipe, f"checkpoint.dir={tmp_path}",
                f"checkpoint.load={tmp_path / 'step_0000001'}")
    for k, v in weights(again).items():
        assert torch.equal(v, before[k]), k


def test_latest_refuses_another_runs_checkpoint_an_explicit_path_does_not(tiny_recipe,
                                                                           tmp_path):
    Trainer(tiny_recipe("train.steps=1", "train.seed=1", f"checkpoint.dir={tmp_path}"),
            verbose=False).fit()
    other = ["train.steps=2", "train.seed=2", f"checkpoint.dir={tmp_path}"]
    with pytest.raises(OptimlError, match=r"another run: train.seed=1 \(this recipe: 2\)"):
        run(tiny_recipe, *other, "checkpoint.load=latest")
    forced = run(tiny_recipe, *other, f"checkpoint.load={tmp_path / 'step_0000001'}")
    assert forced.step == 1


def test_non_finite_tensors_are_never_written(tmp_path):
    with pytest.raises(Diverged, match="model.w holds inf/NaN"):
        ckpt.save(tmp_path / "step_0000001", {"model": {"w": torch.tensor([1.0, float("nan")])}},
                  {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_diverged_run_ends_with_one_line_and_exit_1(tiny_recipe, tmp_path):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(tiny_recipe().to_yaml())
    ck = tmp_path / "ck"
    out = subprocess.run([sys.executable, "-m", "optiml_engine", "train", str(recipe_file),
                          "optim.lr=1e6", "optim.warmup_steps=0", "train.steps=20",
                          "precision.max_skipped_steps=3", f"checkpoint.dir={ck}",
                          "checkpoint.interval=1", "checkpoint.keep_last=30"],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        "optiml: error: training: 3 consecutive steps had inf/NaN")
    assert "Traceback" not in out.stderr
    for path in sorted(ck.glob("step_*")):
        model = run(tiny_recipe, f"checkpoint.load={path}").model
        assert all(torch.isfinite(p).all() for p in model.parameters()), path


def test_eval_of_a_corrupt_checkpoint_is_one_line_exit_2(tiny_recipe, bench_dir, tmp_path,
                                                         capsys):
    from optiml_engine.cli import main

    Trainer(tiny_recipe("train.steps=1", f"checkpoint.dir={tmp_path / 'ck'}"),
            verbose=False).fit()
    (distcp,) = (tmp_path / "ck" / "step_0000001").glob("*.distcp")
    flip(distcp)
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(tmp_path / "ck" / "step_0000001"), "--bench",
                 str(bench_dir / "out"), "--max-instances", "1", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("optiml: error: checkpoint ")
    assert "__0_0.distcp does not match its checksum" in err[-1]
    # --no-verify trusts the disk: the flipped bytes are read (as garbage values, or an error
    # from the reader), never a traceback.
    code = main(["eval", "--checkpoint", str(tmp_path / "ck" / "step_0000001"), "--bench",
                 str(bench_dir / "out"), "--max-instances", "1", "--max-new-tokens", "2",
                 "--no-verify", "--out", str(tmp_path / "ev2")])
    err = capsys.readouterr().err
    assert code in (0, 2) and "does not match its checksum" not in err
