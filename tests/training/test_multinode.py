"""Multi-node launch: two torchrun agents meeting by c10d rendezvous (two "nodes" on this host,
one gloo process each, as tools/launch/ runs them) train exactly as one `--standalone` agent with
the same layout; and the process-group timeout key reaches the process group."""

import datetime
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from optiml_engine.config import load_recipe
from optiml_engine.errors import OptimlError
from optiml_engine.planner.params import model_params

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["parallel.tp=2", "parallel.pp=1", "train.steps=3", "logging.interval=1",
             "checkpoint.dir=null", "logging.dir=null", "data.synthetic_examples=300",
             "data.seq_length=128", "train.global_batch_size=4", "parallel.timeout_minutes=2"]
TRAIN = ["-m", "optiml_engine", "train", "recipes/demo-parallel.yaml", *OVERRIDES]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def losses(stdout: str) -> list[str]:
    return re.findall(r"step \d+/\d+ \| loss (\S+) \| lr \S+ \| grad norm (\S+)", stdout)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_agents_with_c10d_rendezvous_equal_standalone(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    standalone = subprocess.run([*launcher, "--standalone", "--nproc-per-node", "2", *TRAIN],
                                cwd=ROOT, env=env(), capture_output=True, text=True,
                                timeout=280)
    assert standalone.returncode == 0, standalone.stderr[-3000:]
    port = free_port()
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "multinode-test"]
    nodes = [subprocess.Popen([*launcher, *rendezvous, *TRAIN], cwd=ROOT, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [node.communicate(timeout=280) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outs]
    want = losses(standalone.stderr)  # the trainer's console is stderr
    assert len(want) == 3
    # global rank 0 prints; it is on whichever agent the rendezvous made node 0
    got = [losses(err) for _, err in outs]
    assert sorted(got, key=len) == [[], want]
    # the parameter count printed is the whole model's, not one tensor-parallel rank's
    total = model_params(load_recipe("recipes/demo-parallel.yaml", OVERRIDES).model)["total"]
    assert f"| {total / 1e6:.2f}M parameters" in standalone.stderr


def test_timeout_key_reaches_the_process_group(monkeypatch):
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from optiml_engine.distributed import state

    seen = {}
    real = dist.init_process_group

    def init(backend, **kwargs):
        seen.update(kwargs)
        real("fake", store=FakeStore(), rank=kwargs["rank"], world_size=kwargs["world_size"],
             timeout=kwargs["timeout"])

    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    try:
        state.initialize(1, 1, "gloo", timeout_minutes=2.5)
    finally:
        state.destroy()
    assert seen["timeout"] == datetime.timedelta(minutes=2.5)


def test_timeout_key_is_checked():
    recipe = load_recipe("recipes/demo.yaml", ["parallel.timeout_minutes=30"])
    assert recipe.parallel.timeout_minutes == 30.0
    with pytest.raises(OptimlError, match="parallel.timeout_minutes"):
        load_recipe("recipes/demo.yaml", ["parallel.timeout_minutes=0"])


def _fake_bin(tmp_path, *names) -> dict:
    """Commands that record their argv (one line per call) instead of running."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls"\n')
        script.chmod(0o755)
    return {**env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_torchrun_script_line(tmp_path):
    e = _fake_bin(tmp_path, "torchrun")
    e.update(NNODES="2", MASTER_ADDR="node001", JOB_ID="j1")
    proc = subprocess.run(["bash", "tools/launch/torchrun_multinode.sh", "recipes/demo.yaml",
                           "train.steps=1"], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "calls").read_text().split() == [
        "torchrun", "--nnodes", "2", "--nproc-per-node", "8", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "node001:29500", "--rdzv-id", "j1", "--max-restarts", "0",
        "-m", "optiml_engine", "train", "recipes/demo.yaml", "train.steps=1"]


def test_sbatch_script_dry_runs_then_sruns_torchrun(tmp_path):
    e = _fake_bin(tmp_path, "srun")
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text("#!/bin/sh\necho nodeA\necho nodeB\n")
    scontrol.chmod(0o755)
    e.update(SLURM_JOB_NODELIST="node[A-B]", SLURM_NNODES="2", SLURM_JOB_ID="42",
             SLURM_CPUS_PER_TASK="16", GPUS_PER_NODE="1", SLURM_SUBMIT_DIR=str(ROOT))
    proc = subprocess.run(["bash", str(ROOT / "tools/launch/slurm.sbatch"),
                           str(ROOT / "recipes/demo-parallel.yaml"), "parallel.pp=1"],
                          cwd=tmp_path, env=e,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every rank's parameters" in proc.stdout  # the dry run ran, on 2 x 1 ranks
    assert (tmp_path / "calls").read_text().split() == [
        "srun", "--kill-on-bad-exit=1", "torchrun", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "nodeA:29500", "--rdzv-id", "42",
        "--max-restarts", "0", "-m", "optiml_engine", "train",
        str(ROOT / "recipes/demo-parallel.yaml"), "parallel.pp=1"]
