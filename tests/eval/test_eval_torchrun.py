"""`optiml eval` under torchrun (gloo, 2 processes) writes the same results as one process on
the same weights: TP=2 from an HF directory (a real `torchrun` run of the CLI), PP=2 from a
checkpoint saved at TP=2, and two data-parallel replicas splitting the tasks (resumed after a
lost task file). Plus the user errors, each one line and exit code 2."""

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from optiml_engine.cli import main as cli_main
from tests.parallel.harness import spawn

# The engine's protocol ranks the Super-NI label task, so both kinds of scoring are compared.
EVAL_ARGS = ["--shots", "0,1", "--max-instances", "4", "--max-new-tokens", "6",
             "--batch-size", "3", "--protocol", "engine"]


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    """Three synthetic tasks, one per level: free-form, with answer options, and held-out
    instances with a demonstration pool (so 1-shot prompts differ from 0-shot ones)."""
    from optiml_engine.data.synthetic import write_synthetic_superni

    root = tmp_path_factory.mktemp("bench")
    paths = write_synthetic_superni(root / "tasks", seed=0, instances_per_task=6, num_tasks=37)
    free, options, seen = paths[0], paths[35], paths[5]
    ids = [i["id"] for i in json.loads(seen.read_text())["Instances"]]
    manifest = {"tasks": [
        {"path": f"tasks/{free.name}", "format": "superni", "level": "heldout_task"},
        {"path": f"tasks/{options.name}", "format": "superni", "level": "heldout_category"},
        {"path": f"tasks/{seen.name}", "format": "superni", "level": "heldout_instance",
         "eval_ids": ids[3:], "demo_ids": ids[:3]}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def engine_ckpt(tiny_hf_dir, tmp_path_factory):
    """The tiny HF model as a one-process engine checkpoint directory."""
    from optiml_engine.distributed.checkpoint import save_weights
    from optiml_engine.model import OPTForCausalLM

    root = tmp_path_factory.mktemp("ckpt")
    save_weights(root / "step_0000001", OPTForCausalLM.from_hf(tiny_hf_dir),
                 {"step": 1, "recipe": {"data": {"tokenizer": "byte"}}})
    return root


@pytest.fixture(scope="module")
def reference(engine_ckpt, tiny_bench, tmp_path_factory):
    """results.json of the one-process `optiml eval` on the engine checkpoint."""
    out = tmp_path_factory.mktemp("one_process")
    assert cli_main(["eval", "--checkpoint", str(engine_ckpt), "--bench", str(tiny_bench),
                     "--out", str(out), *EVAL_ARGS]) == 0
    results = json.loads((out / "results.json").read_text())
    kinds = {r["kind"] for r in results["instances"]}
    assert kinds == {"rank", "generate"} and len(results["instances"]) == 2 * (4 + 4 + 3)
    # Not a degenerate model: greedy decoding says something, and differently per prompt.
    generated = [r["prediction"] for r in results["instances"] if r["kind"] == "generate"]
    assert len(set(generated)) > 5
    return results


def assert_same_results(got: dict, want: dict) -> None:
    assert got["summary"] == want["summary"]
    assert len(got["instances"]) == len(want["instances"])
    for ours, theirs in zip(got["instances"], want["instances"], strict=True):
        assert (ours["task"], ours["id"], ours["shots"]) == (theirs["task"], theirs["id"],
                                                             theirs["shots"])
        assert ours["prediction"] == theirs["prediction"]  # token for token
        assert ours["scores"] == theirs["scores"]
        if theirs["kind"] == "rank":
            assert ours["log_likelihoods"] == pytest.approx(theirs["log_likelihoods"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_torchrun_tp2_from_hf_dir_equals_one_process(tiny_hf_dir, tiny_bench, reference,
                                                     tmp_path):
    out = tmp_path / "tp2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "optiml_engine", "eval", "--checkpoint", str(tiny_hf_dir), "--bench",
         str(tiny_bench), "--out", str(out), *EVAL_ARGS],
        env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| level |") == 1  # rank 0 alone prints the table
    assert_same_results(json.loads((out / "results.json").read_text()), reference)
    assert (out / "report.md").is_file()
    assert len(list((out / "tasks").rglob("*.json"))) == 6  # 3 tasks x 2 shot counts


def _layouts_worker(rank, hf_dir, ckpt, bench, out):
    from optiml_engine.model.hf_shards import hf_to_engine_sharded

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    args = ["--bench", bench, *EVAL_ARGS]
    codes = {}
    # A checkpoint saved at TP=2, evaluated at PP=2 (DCP reshards it on load).
    hf_to_engine_sharded(hf_dir, os.path.join(out, "ckpt_tp2"), tp=2)
    codes["pp2"] = cli_main(["eval", "--checkpoint", os.path.join(out, "ckpt_tp2"), "--pp", "2",
                             "--out", os.path.join(out, "pp2"), *args])
    # TP=1 on 2 processes: two data-parallel replicas split the (task, shots) pairs.
    dp_out = os.path.join(out, "dp2")
    codes["dp2"] = cli_main(["eval", "--checkpoint", ckpt, "--tp", "1", "--out", dp_out, *args])
    dist.barrier()
    if rank == 0:  # as if the run had died before writing one task
        lost = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(dp_out, "tasks"))
                      for f in fs)[-1]
        os.rename(os.path.join(dp_out, "results.json"), os.path.join(out, "dp2_first.json"))
        os.remove(lost)
    dist.barrier()
    codes["dp2_resumed"] = cli_main(["eval", "--checkpoint", ckpt, "--tp", "1", "--out", dp_out,
                                     *args])
    # 3 heads do not split 2 ways: every rank fails alike, before loading any weight.
    codes["heads"] = cli_main(["eval", "--checkpoint", os.path.join(out, "three_heads"),
                               "--out", os.path.join(out, "heads"), *args])
    with open(os.path.join(out, f"codes{rank}.json"), "w") as f:
        json.dump(codes, f)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_pp2_from_tp2_checkpoint_and_data_parallel_split_equal_one_process(
        tiny_hf_dir, engine_ckpt, tiny_bench, reference, tmp_path, capfd):
    config = json.loads((tiny_hf_dir / "config.json").read_text())
    (tmp_path / "three_heads").mkdir()
    (tmp_path / "three_heads" / "config.json").write_text(json.dumps(
        {**config, "num_attention_heads": 3, "hidden_size": 48, "word_embed_proj_dim": 48}))
    spawn(_layouts_worker, 2, str(tiny_hf_dir), str(engine_ckpt), str(tiny_bench),
          str(tmp_path))
    codes = [json.loads((tmp_path / f"codes{r}.json").read_text()) for r in range(2)]
    assert codes == [{"pp2": 0, "dp2": 0, "dp2_resumed": 0, "heads": 2}] * 2
    assert "num_heads=3 cannot be split 2 ways" in capfd.readouterr().err
    for name in ("pp2", "dp2_first.json", "dp2"):
        path = tmp_path / name
        got = json.loads((path / "results.json" if path.is_dir() else path).read_text())
        assert_same_results(got, reference)


@pytest.mark.parametrize("argv, message", [
    (["--tp", "2", "--pp", "2"], "tp x pp = 4 does not divide the 2 processes"),
    (["--checkpoint", "nowhere"], "--checkpoint nowhere: not found"),
])
def test_user_errors_under_torchrun_are_one_line(argv, message, tiny_hf_dir, tiny_bench,
                                                 monkeypatch, tmp_path, capsys):
    """Caught before any process group is created (so no rank waits for another)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    base = {"--checkpoint": str(tiny_hf_dir), "--bench": str(tiny_bench),
            "--out": str(tmp_path)}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    assert cli_main(["eval", *[x for kv in base.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not dist.is_initialized()
