"""A rank's memory under data-parallel sharding, measured on 2 real gloo ranks, against figures
stated here in terms of W, the model's fp32 weight bytes (4 bytes per parameter of the plain model).

ZeRO-1 and ZeRO-3 make no full-size temporary: a ZeRO-1 step (after the first) allocates under
W / 2 (the old ZeRO-1 flattened every gradient into a new fp32 buffer: W, plus W of fresh
`.grad`s); a ZeRO-3 step under 3 layers' weights + W / 8 (one layer gathered, its gradients, the
activations and kernel scratch, which here are under a layer's size),
and a checkpoint save under W / 4 (what is left is the finiteness check of one tensor at a time;
it was 3 W all-gathered, then 2 W cloned, before writing).
What a rank keeps between steps is the sum of its buffers, computed from the model's shapes.
Measured: glibc's heap in use, sampled at every aten operator (benchmarks/tensor_memory.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import memory_worker  # noqa: E402
from harness import spawn  # noqa: E402

from optiml_engine.config import ModelConfig  # noqa: E402
from optiml_engine.model import OPTForCausalLM  # noqa: E402

MODES = ["zero1", "zero3", "zero1+reduce_scatter", "zero3+reduce_scatter", "none"]
LAYERS = memory_worker.CONFIG["num_layers"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    spawn(memory_worker.worker, 2, MODES, str(tmp))
    ranks = [json.loads((tmp / f"mem{r}.json").read_text()) for r in range(2)]
    print("measured bytes:", ranks, "W:", weight_bytes())
    return ranks


def weight_bytes() -> tuple[int, int]:
    """(all weights, the decoder layers' weights) of the plain model, fp32 bytes."""
    model = OPTForCausalLM(ModelConfig(**memory_worker.CONFIG))
    layers = sum(p.numel() for p in model.decoder.layers.parameters())
    return 4 * sum(p.numel() for p in model.parameters()), 4 * layers


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["zero1", "zero3"])
def test_sharded_step_and_save_make_no_full_size_temporary(measured, mode):
    w, layers = weight_bytes()
    # ZeRO-3 gathers one layer at a time and holds its gradients until they are reduced.
    step_figure = w / 2 if mode == "zero1" else 3 * layers / LAYERS + w / 8
    for rank in measured:
        assert rank[mode]["step"] < step_figure, (mode, rank[mode]["step"], step_figure)
        assert rank[mode]["save"] < w / 4, (mode, rank[mode]["save"], w)
    # The same training whatever the sharding (the parity matrix checks it against torch).
    assert abs(measured[0][mode]["loss"] - measured[0]["none"]["loss"]) < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_what_a_rank_keeps_between_steps(measured):
    """Weights W, gradient buffer W and Adam state (master, two moments) 3 W without sharding;
    ZeRO-1 shards the Adam state and keeps the reduced gradients' slice: W + W + 2 W / 2;
    ZeRO-3 also keeps only half of the layers' weights L (and no gradient buffer for them):
    (W - L) + L / 2 + (W - L) + 2 W / 2. Within W / 16 (Python objects, RNG states)."""
    w, layers = weight_bytes()
    want = {"none": 5 * w, "zero1": 4 * w, "zero3": 4 * w - 1.5 * layers}
    for rank in measured:
        for mode, figure in want.items():
            assert abs(rank[mode]["kept"] - figure) < w / 16, (mode, rank[mode]["kept"], figure)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_reduce_scatter_path_trains_alike(measured):
    """The reduce-scatter that NCCL runs (taken here on gloo) gives the losses of gloo's default
    in-place all-reduce and of no sharding."""
    for rank in measured:
        for mode in ("zero1", "zero3"):
            got = rank[f"{mode}+reduce_scatter"]["loss"]
            assert abs(got - rank["none"]["loss"]) < 1e-5 * rank["none"]["loss"], mode


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_rank_alone_runs_a_forward_inside_full_weights(measured):
    """Inside engine.full_weights() rank 0 runs a forward that the other rank does not (the
    trainer's evaluation on replica 0): no collective hangs, and ZeRO-3 computes what the
    unsharded model does."""
    rank0 = measured[0]
    assert abs(rank0["zero3"]["rank0_forward"] - rank0["none"]["rank0_forward"]) < \
        1e-5 * rank0["none"]["rank0_forward"]
    assert "rank0_forward" not in measured[1]["zero3"]
