"""`launcher: torchrun --standalone --nproc_per_node 2`: each run's training is a real 2-process
gloo job (two data-parallel ranks), and it trains what one process trains: the same loss, and the
same evaluation scores, as the same sweep with `launcher: python`."""

import json
import os
from pathlib import Path

import pytest
import yaml

from optiml_engine.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.dropout=0.0",
        "model.max_position_embeddings=128", "data.seq_length=128", "train.steps=3",
        "train.micro_batch_size=1", "train.global_batch_size=2", "optim.warmup_steps=1",
        "eval.interval=0", "checkpoint.interval=0", "checkpoint.save_initial=false",
        "parallel.backend=gloo"]


@pytest.mark.slow
def test_torchrun_launcher_trains_what_one_process_trains(tmp_path, bench_dir):
    done = {}
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        for launcher in ("python", "torchrun --standalone --nproc_per_node 2"):
            sweep = tmp_path / f"{launcher.split()[0]}.yaml"
            sweep.write_text(yaml.safe_dump({
                "recipe": str(REPO / "recipes" / "demo.yaml"), "bench": str(bench_dir / "out"),
                "overrides": TINY, "seeds": [5], "launcher": launcher,
                "variants": [{"name": "only"}],
                "eval": {"shots": [0], "max_instances": 1, "max_new_tokens": 2,
                         "levels": ["heldout_category"]}}))
            out = tmp_path / launcher.split()[0]
            assert main(["sweep", str(sweep), "--out", str(out)]) == 0
            done[launcher.split()[0]] = json.loads((out / "runs" / "only-s5" /
                                                    "DONE.json").read_text())
            log = (out / "runs" / "only-s5" / "train.log").read_text()
            assert ("dp 2" in log) == (launcher != "python")
    finally:
        del os.environ["OMP_NUM_THREADS"]
    one, two = done["python"], done["torchrun"]
    assert two["cost"]["target_tokens"] == one["cost"]["target_tokens"] > 0
    assert two["cost"]["final_loss"] == pytest.approx(one["cost"]["final_loss"], rel=1e-5)
    assert two["scores"] == one["scores"]
