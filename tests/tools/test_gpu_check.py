"""tools/gpu_check.sh: its dry run on the CPU writes every figure key and the table, and the
pieces it is made of (pytest summaries, ratios, the FLOP count, the example profile)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from optiml_engine.benchmarks import gpu_check
from optiml_engine.benchmarks.train import examples_flops, hf_micro_batches

ROOT = Path(__file__).resolve().parents[2]
# Measured by the dry run on a CPU too (the Triton kernels under the interpreter, gloo).
CPU_MEASURED = [k for k in gpu_check.FIGURE_KEYS if k.startswith(("attention_", "ce_", "train_"))
                ] + ["adamw_torch_fused_ms", "adamw_triton_vs_torch_fused", "matmul_bf16_tflops"]


@pytest.mark.slow
def test_dry_run_writes_every_figure_and_the_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHON"] = sys.executable
    run = subprocess.run(["bash", str(ROOT / "tools/gpu_check.sh"), "--dry-run", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Few files, none nested: the GPU machine sends back at most 8, 2 folders deep.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu_check.json", "gpu_check.log", "gpu_check.md", "pytest.log"]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["mode"] == "dry-run"
    assert set(gpu_check.FIGURE_KEYS) <= set(doc["figures"])
    figures = doc["figures"]
    for key in CPU_MEASURED:  # a CPU's TFLOP/s round to 0 at 4 decimals
        assert isinstance(figures[key], float) and (figures[key] > 0 or "tflops" in key), key
    assert figures["nccl_backend"] == "gloo"
    assert figures["nccl_collectives_ok"] is True
    assert figures["nccl_engine_step_ok"] is True
    assert figures["nccl_step_matches_no_process_group"] is True
    assert figures["build_cuda_ops"] is False and figures["adamw_cuda_vs_torch_fused"] is None
    assert figures["tests_failed"] == 0 and figures["tests_errors"] == 0
    assert figures["tests_skipped"] >= 9  # the GPU tests, collected and skipped on a CPU
    assert list(doc["steps"]) == ["build", "env", "tests", "attention", "cross-entropy",
                                  "adamw", "train", "nccl", "report"]
    for name, step in doc["steps"].items():
        assert step["rc"] in ((0, -1) if name == "build" else (0,)), (name, step)
        assert not step["timed_out"], name
    assert doc["train"]["engine"]["tokens"] == doc["train"]["transformers"]["tokens"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("### GPU check: dry run on a CPU")
    assert "| check | figure | target |" in table
    for d in gpu_check.DIMS:
        assert f"| attention fwd+bwd D{d}: Triton vs masked SDPA | " in table
    assert "multi-rank NCCL untested (one GPU)" in table
    assert table in run.stdout  # printed last, for a reader of the output's tail


def test_pytest_summaries_are_summed_and_failures_listed(tmp_path):
    log = tmp_path / "pytest.log"
    log.write_text("$ -m pytest -q tests/kernels\n..F.s\nFAILED tests/kernels/test_x.py::t - x\n"
                   "1 failed, 3 passed, 1 skipped in 12.50s\n$ -m pytest -m gpu tests/other\n"
                   "=========== 2 passed, 1 error, 4 deselected in 3.01s ===========\n")
    got = gpu_check.parse_pytest_log(log)
    assert {k: got[k] for k in ("passed", "failed", "skipped", "errors")} == {
        "passed": 5, "failed": 1, "skipped": 1, "errors": 1}
    assert got["failures"] == ["FAILED tests/kernels/test_x.py::t - x"]
    assert got["complete"] is True
    (tmp_path / "cut.log").write_text("$ -m pytest\n....")
    assert gpu_check.parse_pytest_log(tmp_path / "cut.log")["complete"] is False


def test_ratio_and_an_empty_report():
    assert gpu_check.ratio(3.0, 2.0) == 1.5
    assert gpu_check.ratio(1.0, 3.0) == 0.3333
    assert gpu_check.ratio(None, 2.0) is None and gpu_check.ratio(1.0, 0.0) is None
    text = gpu_check.report_markdown({"figures": {}, "steps": {}})
    assert "| attention fwd+bwd D80: Triton vs masked SDPA | n/a (n/a, n/a) | >= 3x: n/a |" in text


def test_step_flops_by_hand():
    cfg = SimpleNamespace(hidden_size=2, num_layers=1, ffn_hidden_size=8, vocab_size=10,
                          word_embed_proj_dim=2)
    # dense 2*(4*4 + 2*2*8)*3 = 288, attention 4*2*(3*4/2) = 48, head 2*10*2*1 = 40; x3
    assert examples_flops(cfg, [([2, 5, 2], 1)]) == 3 * (288 + 48 + 40)


def test_hf_micro_batches_keep_every_example_once():
    examples = [([2, i, 2], 1) for i in range(10)]
    assert hf_micro_batches(examples, None, 0) == [examples]
    batches = hf_micro_batches(examples, 4, 0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(e[0][1] for b in batches for e in b) == list(range(10))


def test_instruction_jsonl_fills_the_profile(tmp_path):
    path = gpu_check.write_instruction_jsonl(tmp_path / "t.jsonl", 400, 2048, seed=1)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    lengths = sorted(len(r["src"]) + len(r["tgt"]) + 2 for r in records)
    assert len(records) == 400 and all(r["src"] and r["tgt"] for r in records)
    assert 4 <= lengths[0] and lengths[-1] <= 2048
    assert 80 <= lengths[200] <= 180  # the median of the log-normal body is 120
