"""Every layout, and the interleaved schedule, trains like one process: 10 steps on real gloo
processes (tiny OPT, dropout 0, fp32). Losses and gradient norms match the single-process run
to 1e-5 relative, and so do the final weights (each rank checks its shard against the same
slice of the reference)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402
import layouts  # noqa: E402

WORLD = 8
LAYOUTS = [
    dict(tp=2, pp=1, dp=1, chunk=0),  # the full-logits vocab-parallel loss
    dict(tp=2, pp=1, dp=1, sp=True, chunk=0),
    dict(tp=2, pp=1, dp=1),  # the chunked, target-only one (every other layout too)
    dict(tp=2, pp=1, dp=1, sp=True),
    dict(tp=1, pp=2, dp=1),
    dict(tp=1, pp=1, dp=2),
    dict(tp=1, pp=1, dp=2, zero1=True),
    dict(tp=2, pp=2, dp=1, sp=True),
    dict(tp=2, pp=2, dp=1, sp=True, recompute="full"),
    dict(tp=2, pp=1, dp=2, sp=True),
    dict(tp=2, pp=1, dp=2, sp=True, zero1=True),
    dict(tp=1, pp=2, dp=2),
    dict(tp=1, pp=2, dp=2, zero1=True),
    dict(tp=2, pp=2, dp=2, sp=True),
    dict(tp=2, pp=2, dp=2, sp=True, zero1=True),
    dict(tp=1, pp=4, dp=1),
    dict(tp=1, pp=2, dp=1, vs=2),  # interleaved 1F1B, 2 virtual stages per rank
    dict(tp=2, pp=2, dp=2, sp=True, vs=2),
]
STEPS, GLOBAL_BATCH, MICRO = 10, 8, 2


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    steps = harness.make_steps(STEPS, GLOBAL_BATCH)
    reference = harness.reference_run(steps, MICRO)
    torch.save({"steps": steps, "reference": reference, "micro": MICRO}, tmp / "data.pt")
    harness.spawn(layouts.worker, WORLD, LAYOUTS, str(tmp / "data.pt"), str(tmp))
    per_rank = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return reference, per_rank


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", LAYOUTS, ids=layouts.layout_name)
def test_layout_matches_single_process(results, layout):
    reference, per_rank = results
    name = layouts.layout_name(layout)
    ranks = [r[name] for r in per_rank if name in r]
    assert len(ranks) == layout["tp"] * layout["pp"] * layout["dp"]
    for res in ranks:  # the loss is reported on every rank, not only the last stage
        assert max(map(rel, res["losses"], reference["losses"])) < 1e-5
        assert max(map(rel, res["norms"], reference["norms"])) < 1e-5
        assert res["weight_err"] < 1e-5
    # Together the ranks hold every parameter of the model.
    held = set().union(*(res["params"] for res in ranks))
    assert held == set(reference["weights"])
