"""`optiml train --dry-run`: every rank's part built on the meta device under a fake process
group; its parameters equal the planner's count, and for a small model a count by hand from the
one-process model's tensors."""

import re
import time

import pytest
import torch

from optiml_engine.cli import main
from optiml_engine.config import load_recipe
from optiml_engine.model.opt import OPTForCausalLM
from optiml_engine.planner.params import local_params

ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+([\d,]+)\s*$")


def rows(out: str) -> dict[tuple[int, int], int]:
    found = {}
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            found[(int(m[2]), int(m[3]))] = int(m[4].replace(",", ""))
    return found


@pytest.mark.parametrize("recipe, gpus, tp", [("recipes/opt-iml-30b.yaml", 64, 2),
                                              ("recipes/opt-iml-175b.yaml", 128, 8)])
def test_big_recipes_dry_run_under_a_minute(capsys, recipe, gpus, tp):
    start = time.perf_counter()
    assert main(["train", recipe, "--dry-run", "--gpus", str(gpus)]) == 0
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    got = rows(out)
    m = load_recipe(recipe, []).model
    assert set(got) == {(t, 0) for t in range(tp)}
    assert all(n == local_params(m, tp, 1, 0) for n in got.values())
    assert "equal the planner's" in out
    assert seconds < 60


def by_hand(recipe, tp: int, pp: int, stage: int) -> int:
    """One rank's parameters from the full one-process model: tensor-parallel layers split,
    the rest whole; layers [stage * L / pp, (stage + 1) * L / pp); embeddings at the ends."""
    torch.manual_seed(0)
    full = OPTForCausalLM(recipe.model)
    split = ("qkv_proj.", "fc1.", "out_proj.weight", "fc2.weight", "embed_tokens.")
    per = full.config.num_layers // pp
    n = 0
    for name, p in full.named_parameters():
        if ".layers." in name:
            if int(name.split(".layers.")[1].split(".")[0]) // per != stage:
                continue
        elif "embed_tokens" in name:  # the first stage's, and the last stage's tied copy
            if stage not in (0, pp - 1):
                continue
        elif "embed_positions" in name and stage != 0:
            continue
        elif "final_layer_norm" in name and stage != pp - 1:
            continue
        n += p.numel() // tp if any(s in name for s in split) else p.numel()
    return n


@pytest.mark.parametrize("tp, pp, zero1", [(2, 2, True), (4, 1, False), (1, 4, True)])
def test_small_model_counts_by_hand(capsys, tp, pp, zero1):
    overrides = ["model.vocab_size=96", "model.hidden_size=32", "model.num_layers=4",
                 "model.num_heads=4", "model.max_position_embeddings=32",
                 "data.seq_length=16", "train.global_batch_size=8", "train.micro_batch_size=1",
                 f"parallel.tp={tp}",
                 f"parallel.pp={pp}", f"parallel.shard={'zero1' if zero1 else 'none'}",
                 "precision.dtype=bf16"]
    assert main(["train", "recipes/demo.yaml", "--dry-run", "--gpus", str(2 * tp * pp),
                 *overrides]) == 0
    out = capsys.readouterr().out
    recipe = load_recipe("recipes/demo.yaml", overrides)
    got = rows(out)
    assert got == {(t, s): by_hand(recipe, tp, pp, s) for t in range(tp) for s in range(pp)}


def test_gpus_without_dry_run_refused(capsys):
    assert main(["train", "recipes/demo.yaml", "--gpus", "8"]) == 2
    assert "--dry-run" in capsys.readouterr().err
