"""Greedy decoding and rank classification under tensor parallelism (TP=2, gloo, 2 processes)
equal transformers on one process. Logits stay sharded: only maxima and sums cross ranks."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.eval.test_generate import _prompts, _reference
from tests.eval.test_scoring import _case, _reference_log_likelihood


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, hf_dir, out_file):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        from optiml_engine.distributed import state
        from optiml_engine.eval.generate import greedy_generate
        from optiml_engine.eval.scoring import score_options
        from optiml_engine.model import OPTForCausalLM
        from optiml_engine.model.parallelize import apply_tensor_parallel

        state.initialize(tp=2)
        model = OPTForCausalLM.from_hf(hf_dir).eval()
        apply_tensor_parallel(model, state.tp_group())
        assert model.output_weight.shape[0] == 150  # the vocabulary really is split
        prompts, options = _case(0)
        result = {
            "generated": greedy_generate(model, _prompts((5, 9, 3, 12)), max_new_tokens=12),
            "limited": greedy_generate(model, _prompts((5, 9)), max_new_tokens=6,
                                       vocab_limit=140),
            "log_likelihoods": [s.log_likelihoods for s in score_options(model, prompts,
                                                                         options)],
        }
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(result, f)
        state.destroy(keep_process_group=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tp2_greedy_and_rank_classification_match_transformers(tiny_hf_dir, tiny_models,
                                                               tmp_path):
    out_file = tmp_path / "tp.json"
    mp.spawn(_worker, args=(_free_port(), str(tiny_hf_dir), str(out_file)), nprocs=2, join=True)
    got = json.loads(out_file.read_text())
    ours, hf = tiny_models
    assert got["generated"] == _reference(hf, _prompts((5, 9, 3, 12)), 12, eos_id=2)

    from optiml_engine.eval.generate import greedy_generate

    assert got["limited"] == greedy_generate(ours, _prompts((5, 9)), 6, vocab_limit=140)
    assert all(t < 140 for row in got["limited"] for t in row)
    prompts, options = _case(0)
    for prompt, opts, lls in zip(prompts, options, got["log_likelihoods"], strict=True):
        want = [_reference_log_likelihood(hf, prompt, o) for o in opts]
        assert lls == pytest.approx(want, abs=1e-4)
