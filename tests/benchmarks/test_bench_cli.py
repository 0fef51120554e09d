"""`optiml bench`: its help names every verb and what it measures; `--quick` runs in seconds."""

import csv

import pytest
import torch

from optiml_engine.cli import main

VERBS = ["attention", "cross-entropy", "adamw", "packing", "train"]


def test_help_lists_each_verb_and_what_it_measures(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    listed = [line.split()[0] for line in lines[lines.index("verbs:") + 1:]
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == VERBS
    text = " ".join(out.split())
    for fragment in ("ms and TFLOP/s", "variant (unfused, fused gradient, chunked", "ms and GB/s",
                     "examples/s and packing efficiency", "target tokens/s and their ratio",
                     "`--quick` runs any of them"):
        assert fragment in text


def test_no_verb_prints_the_help_and_exits_2(capsys):
    assert main(["bench"]) == 2
    assert capsys.readouterr().err.startswith("usage: optiml bench {attention,cross-entropy,"
                                              "adamw,packing,train} [--quick] [options]\n")


def test_unknown_verb_is_one_line(capsys):
    assert main(["bench", "atention"]) == 2
    assert capsys.readouterr().err == ("optiml: error: optiml bench: unknown benchmark "
                                       "'atention' (choose from: attention, cross-entropy, adamw,"
                                       " packing, train)\n")


def test_packing_quick(capsys):
    assert main(["bench", "packing", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "20,000 examples, capacity 2048: C++ is " in out and "identical samples" in out


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU backends and sizes")
@pytest.mark.parametrize("kind, backends", [
    ("attention", ["sdpa_masked", "sdpa_per_example"]),
    ("cross-entropy", ["torch_unfused", "torch_fused_grad", "linear_ce_chunk512",
                       "linear_ce_chunk1024"]),
])
def test_kernel_benchmarks_quick(kind, backends, tmp_path, capsys):
    assert main(["bench", kind, "--quick", "--out", str(tmp_path)]) == 0
    with open(tmp_path / f"{kind.replace('-', '_')}.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["backend"] for r in rows] == backends
    assert all(float(r["ms"]) > 0 for r in rows)
    if kind == "cross-entropy":
        assert {r["shape"] for r in rows} == {"512 tok (70% targets) x 50272 vocab, hidden 768, "
                                              "fp32"}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU sizes")
def test_adamw_quick(tmp_path):
    assert main(["bench", "adamw", "--quick", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "adamw.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["shape"] for r in rows} == {"OPT layout, 2 layers, width 256: 2.6M params, "
                                          "28 tensors, fp32"}
    assert {"loop", "foreach", "torch.optim(foreach)"} <= {r["backend"] for r in rows}


@pytest.mark.slow
def test_train_quick(capsys):
    pytest.importorskip("transformers")
    assert main(["bench", "train", "--quick"]) == 0
    out = capsys.readouterr().out
    assert ("| 4 packed samples of 256 tokens/step = 8 examples, padded per step for transformers "
            "| 2 timed steps after 1 warm-up") in out
    assert "ratio engine / transformers: " in out
