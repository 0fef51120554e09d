"""The README's "Using it" block, run command by command (shortened by overrides) in a fresh
directory, so that it cannot drift from the code. Every command of the block must appear in
`HOW` below: a new or changed README line fails this test until it says how to run it."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = "skip"

# README command (comments dropped) -> how the test runs it: (arguments appended to shorten it,
# placeholders replaced), or (SKIP, why).
HOW = {
    "optiml data build recipes/bench/synthetic.yaml --out runs/bench-synthetic": ([], {}),
    "optiml train recipes/demo.yaml train.steps=50 optim.lr=1e-3": (["train.steps=2"], {}),
    "optiml config show recipes/demo.yaml train.steps=50": ([], {}),
    "torchrun --standalone --nproc_per_node 4 -m optiml_engine train recipes/demo-parallel.yaml": (
        ["train.steps=2", "data.synthetic_examples=64"], {}),
    "optiml eval --checkpoint runs/demo/checkpoints --bench runs/bench-synthetic --shots 0,2 "
    "--max-instances 10 --max-new-tokens 24 --out runs/eval": (
        ["--max-instances", "2", "--max-new-tokens", "4", "--levels", "heldout_task"], {}),
    "torchrun --standalone --nproc_per_node 4 -m optiml_engine eval --checkpoint CKPT "
    "--bench BENCH --out OUT --tp 2 --pp 2": (
        ["--max-instances", "1", "--max-new-tokens", "2", "--levels", "heldout_task"],
        {"CKPT": "runs/demo-parallel/checkpoints", "BENCH": "runs/bench-synthetic",
         "OUT": "runs/eval-parallel"}),
    # Needs a real HF OPT directory: it gets the one engine2hf writes (so it runs after it);
    # the optional [--tp 8 --pp 1] is left out (the demo model has 4 heads).
    "optiml convert hf2engine --hf path/to/opt-hf-dir --out ckpt/opt [--tp 8 --pp 1]": (
        [], {"path/to/opt-hf-dir": "hf-out", "[--tp": None, "8": None, "--pp": None, "1]": None}),
    "optiml convert engine2hf --ckpt runs/demo/checkpoints --out hf-out": ([], {}),
    "optiml plan recipes/opt-iml-30b.yaml --gpus 64": ([], {}),
    "optiml bench --help": ([], {}),
    "optiml bench packing --quick": ([], {}),
    "make gpu-check": (SKIP, "needs a GPU; its CPU dry run is tests/tools/test_gpu_check.py"),
    "tensorboard --logdir runs/demo/tb": (SKIP, "a server that never exits: the test checks the "
                                          "event files it would show instead"),
}
LAST = ("optiml convert hf2engine",)  # run after the others (it reads engine2hf's output)


def using_it_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Using it\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    argvs = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    return [argv for argv in argvs if argv]  # a line that is only a comment runs nothing


def test_every_command_of_the_block_is_known():
    assert [" ".join(argv) for argv in using_it_commands()] == list(HOW)


def _argv(argv: list[str]) -> list[str]:
    extra, replace = HOW[" ".join(argv)]
    out = [replace.get(a, a) for a in argv]
    return [a for a in out if a is not None] + extra


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_using_it_block_runs(tmp_path, monkeypatch, capsys):
    from optiml_engine.cli import main
    from optiml_engine.config import load_recipe

    (tmp_path / "recipes").symlink_to(ROOT / "recipes")  # a fresh directory, as after a clone
    monkeypatch.chdir(tmp_path)
    commands = [argv for argv in using_it_commands() if HOW[" ".join(argv)][0] != SKIP]
    commands.sort(key=lambda argv: " ".join(argv).startswith(LAST))  # stable: README order
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    outputs = {}
    for argv in commands:
        args = _argv(argv)
        if args[0] == "torchrun":  # the same launcher, without relying on PATH
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args[1:]],
                                  env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, (args, proc.stderr[-2000:])
        else:
            assert args[0] == "optiml"
            capsys.readouterr()
            try:
                rc = main(args[1:])
            except SystemExit as e:  # argparse's --help
                rc = e.code
            assert rc == 0, (args, capsys.readouterr().err[-2000:])
            outputs[" ".join(argv[:3])] = capsys.readouterr().out

    runs = tmp_path / "runs"
    assert (runs / "bench-synthetic" / "manifest.json").is_file()
    assert sorted(p.name for p in (runs / "demo" / "checkpoints").iterdir()) == [
        "initial", "step_0000002"]
    results = json.loads((runs / "eval" / "results.json").read_text())
    assert results["meta"]["shots"] == [0, 2]
    assert len(results["instances"]) == 12 * 2 * 2  # held-out tasks x instances x shots
    assert sorted(p.name for p in (runs / "demo-parallel" / "checkpoints").iterdir()) == [
        "step_0000002"]
    parallel = json.loads((runs / "eval-parallel" / "results.json").read_text())
    assert len(parallel["instances"]) == 12 * 3  # default shots: Super-NI's 0, 2 and 5 (§5.4)
    assert (tmp_path / "hf-out" / "config.json").is_file() and (tmp_path / "ckpt" / "opt").is_dir()
    # config show's output is the recipe the train line resolves (as far as it was shown)
    shown = tmp_path / "shown.yaml"
    shown.write_text(outputs["optiml config show"])
    assert load_recipe(shown) == load_recipe("recipes/demo.yaml", ["train.steps=50"])
    assert "packing" in outputs["optiml bench --help"]
    assert "20,000 examples, capacity 2048" in outputs["optiml bench packing"]
    assert "tp  pp   dp" in outputs["optiml plan recipes/opt-iml-30b.yaml"]
    # what `tensorboard --logdir runs/demo/tb` would show
    assert list((runs / "demo" / "tb").rglob("events.out.tfevents.*"))
