"""A sweep of 3 variants x 2 seeds on a tiny model, end to end: killed after its first finished
run and started again, it trains nothing twice and writes the same report, byte for byte apart
from the timings, as the same sweep run uninterrupted (there with --parallel 2)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from optiml_engine.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
        "model.max_position_embeddings=128", "data.seq_length=128", "train.steps=3",
        "train.micro_batch_size=2", "train.global_batch_size=2", "optim.warmup_steps=1",
        "eval.interval=0", "checkpoint.interval=0", "checkpoint.save_initial=false",
        "logging.interval=1"]


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def without_timings(text: str) -> str:
    return re.sub(r"\| [0-9.]+ s \| (\d+) \| [0-9.]+ tok/s \|", r"| T s | \1 | T tok/s |", text)


@pytest.mark.slow
def test_killed_sweep_continues_and_reports_the_same(tmp_path, bench_dir, capsys):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(yaml.safe_dump({
        "recipe": str(REPO / "recipes" / "demo.yaml"), "bench": str(bench_dir / "out"),
        "overrides": TINY, "seeds": [1, 2], "grid": {"data.eps_cap": [4, 16, 1000]},
        "eval": {"shots": [0], "max_instances": 1, "max_new_tokens": 2, "batch_size": 16,
                 "levels": ["heldout_category", "heldout_task"]}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "optiml_engine", "sweep", str(sweep),
                             "--out", str(killed)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(killed.glob("runs/*/DONE.json")):
        assert proc.poll() is None and time.time() < deadline, "the sweep ended early"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the run it was on
    proc.wait()
    done_at_kill = {p.parent.name for p in killed.glob("runs/*/DONE.json")}
    before = len(events(killed))

    os.environ["OMP_NUM_THREADS"] = "1"  # the children of this process, as above
    try:
        capsys.readouterr()
        assert main(["sweep", str(sweep), "--out", str(killed)]) == 0
        printed = capsys.readouterr().out.splitlines()
        reference = tmp_path / "reference"
        assert main(["sweep", str(sweep), "--out", str(reference), "--parallel", "2"]) == 0
    finally:
        del os.environ["OMP_NUM_THREADS"]

    names = {f"eps_cap={v}-s{s}" for v in (4, 16, 1000) for s in (1, 2)}
    left = len(names) - len(done_at_kill)
    assert printed[0] == (f"sweep tiny: {len(done_at_kill)} of 6 runs already done, {left} to "
                          "run, 1 at a time -> " + str(killed))
    progress = [line for line in printed if re.match(r"\[\d/\d\] ", line)]
    assert len(progress) == left  # one line per finished run, its scores and the ETA
    assert all(" | cat " in line and " | selection " in line and " | ETA " in line
               for line in progress)
    assert progress[-1].endswith("ETA 0s")
    capsys.readouterr()  # what the reference sweep printed
    assert main(["sweep", "--status", str(killed)]) == 0
    assert capsys.readouterr().out.startswith("sweep tiny: 6/6 done, 0 running, 0 failed")
    assert {p.parent.name for p in killed.glob("runs/*/DONE.json")} == names
    after = events(killed)[before:]
    assert not {e["run"] for e in after} & done_at_kill  # nothing finished is touched again
    trained = [e["run"] for e in events(killed) if e["event"] == "train_start"]
    assert sorted(set(trained)) == sorted(names)
    assert all(trained.count(n) == 1 for n in done_at_kill)  # each finished run trained once
    assert len(trained) <= len(names) + 1  # at most the run the kill interrupted, twice

    report = (killed / "report.md").read_text()
    assert "eps_cap=1000" in report and "held-out categories 0-shot" in report
    assert without_timings(report) == without_timings((reference / "report.md").read_text())
    assert report != without_timings(report)  # the timings were there to mask
    k, r = (json.loads((d / "results.json").read_text()) for d in (killed, reference))
    for res in (k, r):
        for run in res["runs"]:
            for key in ("seconds", "target_tokens_per_s", "resumed_at_step", "steps"):
                run["cost"].pop(key)
    assert k == r
