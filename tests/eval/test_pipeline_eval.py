"""Greedy decoding and rank classification under pipeline parallelism (PP=2, TP=2 x PP=2, and
PP=2 with two interleaved chunks per rank; gloo, 4 processes) equal transformers on one process.
Every rank of the pipeline returns the same answer."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.eval.conftest import TINY
from tests.eval.test_generate import _prompts, _reference
from tests.eval.test_scoring import _case, _reference_log_likelihood

LAYOUTS = {"pp2": (1, 2, 1), "tp2pp2": (2, 2, 1), "pp2v2": (1, 2, 2)}  # tp, pp, virtual
LENGTHS = (5, 9, 3, 12)  # batch 4, left-padded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_layout(hf_dir, eos_id, tp, pp, virtual):
    from optiml_engine.eval.generate import greedy_generate
    from optiml_engine.eval.pipeline_eval import PipelineEvalModel
    from optiml_engine.eval.scoring import score_options
    from optiml_engine.model import OPTForCausalLM
    from optiml_engine.parallel import state
    from optiml_engine.parallel.interleaved import keep_chunks
    from optiml_engine.parallel.pipeline import decoder_layers, keep_stage
    from optiml_engine.parallel.tensor_parallel import apply_tensor_parallel

    state.initialize(tp=tp, pp=pp, world_size=tp * pp)
    try:
        if not state.in_grid():
            return None
        model = OPTForCausalLM.from_hf(hf_dir).eval()
        apply_tensor_parallel(model, state.tp_group())
        g = state.grid()
        if virtual > 1:
            chunks = keep_chunks(model, g.pp_rank, pp, virtual)
        else:
            keep_stage(model, g.pp_rank, pp)
            chunks = [decoder_layers(model)]
        stage = PipelineEvalModel(model, chunks)
        prompts, options = _case(0)
        return {
            "layers": sorted(int(k) for k in model.decoder.layers.keys()),
            "generated": greedy_generate(stage, _prompts(LENGTHS), 12, eos_id=eos_id),
            "limited": greedy_generate(stage, _prompts((5, 9)), max_new_tokens=6,
                                       vocab_limit=140),
            "log_likelihoods": [s.log_likelihoods for s in score_options(stage, prompts,
                                                                         options)],
        }
    finally:
        state.destroy(keep_process_group=True)


def _worker(rank, port, hf_dir, eos_id, out_dir):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=4)
    try:
        results = {name: _run_layout(hf_dir, eos_id, *layout) for name, layout in LAYOUTS.items()}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def four_layer_hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    model = transformers.OPTForCausalLM(
        transformers.OPTConfig(**{**TINY, "num_hidden_layers": 4})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("tiny_opt4")
    model.save_pretrained(path)
    return path, model


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_pipeline_greedy_and_rank_classification_match_transformers(four_layer_hf_dir,
                                                                    tmp_path):
    hf_dir, hf = four_layer_hf_dir
    # A random model rarely says </s>: stop instead at a token row 0 emits, so rows finish at
    # different steps and the stages must drop the same rows from their caches.
    eos_id = _reference(hf, _prompts(LENGTHS), 12, eos_id=2)[0][1]
    want_generated = _reference(hf, _prompts(LENGTHS), 12, eos_id=eos_id)
    assert len({len(row) for row in want_generated}) > 2 and max(map(len, want_generated)) == 12
    mp.spawn(_worker, args=(_free_port(), str(hf_dir), eos_id, str(tmp_path)), nprocs=4,
             join=True)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]

    from optiml_engine.eval.generate import greedy_generate
    from optiml_engine.model import OPTForCausalLM

    want_limited = greedy_generate(OPTForCausalLM.from_hf(hf_dir).eval(), _prompts((5, 9)), 6,
                                   vocab_limit=140)
    prompts, options = _case(0)
    want_lls = [[_reference_log_likelihood(hf, p, o) for o in opts]
                for p, opts in zip(prompts, options, strict=True)]
    layers = {"pp2": [[0, 1], [2, 3]], "tp2pp2": [[0, 1], [2, 3]], "pp2v2": [[0, 2], [1, 3]]}
    for name, (tp, pp, _) in LAYOUTS.items():
        for rank in range(tp * pp):
            res = got[rank][name]
            assert res["layers"] == layers[name][rank // tp], (name, rank)  # stages really split
            assert res["generated"] == want_generated, (name, rank)
            assert res["limited"] == want_limited, (name, rank)
            for lls, want in zip(res["log_likelihoods"], want_lls, strict=True):
                assert lls == pytest.approx(want, abs=1e-4), (name, rank)
        assert all(got[rank][name] is None for rank in range(tp * pp, 4))
