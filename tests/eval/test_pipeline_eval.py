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
    from optiml_engine.distributed import state
    from optiml_engine.eval.generate import greedy_generate
    from optiml_engine.eval.pipeline_eval import PipelineEvalModel
    from optiml_engine.eval.scoring import score_options
    from optiml_engine.model import OPTForCausalLM
    from optiml_engine.model.parallelize import (
        apply_tensor_parallel,
        decoder_layers,
        keep_chunks,
        keep_stage,
    )

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


# -- in-training evaluation under the trainer's layouts ----------------------------------------

RECIPE = """
model: {vocab_size: 264, hidden_size: 32, num_layers: 4, num_heads: 4, ffn_hidden_size: 64,
        max_position_embeddings: 64, dropout: 0.0}
data: {synthetic: true, synthetic_examples: 64, tokenizer: byte, seq_length: 64}
optim: {lr: 1.0e-3, warmup_steps: 2, clip_grad: 1.0}
train: {steps: 2, seed: 3, micro_batch_size: 2, global_batch_size: 8}
eval: {interval: 2, subset_tasks: 1, subset_instances: 2, max_new_tokens: 4}
logging: {interval: 100}
"""
TRAINER_RUNS = {"tp2pp2sp": ["parallel.tp=2", "parallel.pp=2", "parallel.sp=true"],
                "pp2dp2": ["parallel.pp=2"]}


def _records(model, evaluator):
    """Every prediction of the evaluator's subset (what its scalars are computed from)."""
    from optiml_engine.eval.harness import evaluate_task

    return [r for et in evaluator.suite
            for r in evaluate_task(model, evaluator.tokenizer, et, 0, evaluator.settings)]


def _raw_outputs(model):
    """Token ids and option log-likelihoods of random prompts, never stopping early (the
    little-trained model's bench predictions are mostly empty)."""
    from optiml_engine.eval.generate import greedy_generate
    from optiml_engine.eval.scoring import score_options

    g = torch.Generator().manual_seed(5)
    rand = lambda n: torch.randint(3, 256, (n,), generator=g).tolist()  # noqa: E731
    prompts = [[2, *rand(n)] for n in (7, 3, 12, 5)]
    options = [[rand(2), rand(5)], [rand(1), rand(3), rand(4)], [rand(6)], [rand(2), rand(1)]]
    return {"generated": greedy_generate(model, prompts, 10, eos_id=-1),
            "log_likelihoods": [s.log_likelihoods for s in score_options(model, prompts,
                                                                         options)]}


def _trainer_worker(rank, port, recipe_path, bench, out_dir):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=4)
    from optiml_engine.config import load_recipe
    from optiml_engine.distributed import state
    from optiml_engine.eval.pipeline_eval import PipelineEvalModel, training_evaluator
    from optiml_engine.training.trainer import Trainer

    results = {}
    try:
        for name, overrides in TRAINER_RUNS.items():
            recipe = load_recipe(recipe_path, [*overrides, f"eval.bench={bench}",
                                               f"logging.dir={os.path.join(out_dir, name)}"])
            # The grid is the test's, so it outlives fit() for the checks below.
            state.initialize(recipe.parallel.tp, recipe.parallel.pp)
            try:
                trainer = Trainer(recipe, verbose=False, make_evaluator=training_evaluator)
                trainer.fit()  # evaluates at step 2 (rank 0 writes the history)
                records = raw = None
                if state.dp_rank() == 0:
                    stage = PipelineEvalModel(trainer.model, trainer.engine.chunks)
                    records = _records(stage, trainer.evaluator.evaluator)
                    raw = _raw_outputs(stage)
                results[name] = {"scalars": trainer.evaluator(trainer.model,
                                                              trainer.engine.chunks, 3),
                                 "records": records, "raw": raw}
            finally:
                state.destroy(keep_process_group=True)
                dist.barrier()
        with open(os.path.join(out_dir, f"trainer{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trainer_evaluates_alike_under_every_layout(bench_dir, tmp_path):
    pytest.importorskip("optiml_engine._C")
    from optiml_engine.config import load_recipe
    from optiml_engine.eval.pipeline_eval import training_evaluator
    from optiml_engine.training.trainer import Trainer

    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    bench = str(bench_dir / "out")
    mp.spawn(_trainer_worker, args=(_free_port(), str(path), bench, str(tmp_path)), nprocs=4,
             join=True)
    reference = Trainer(load_recipe(path, [f"eval.bench={bench}",
                                           f"logging.dir={tmp_path / 'ref'}"]), verbose=False,
                        make_evaluator=training_evaluator)
    reference.fit()
    want_records = _records(reference.model.eval(), reference.evaluator.evaluator)
    want_scalars = reference.evaluator(reference.model, reference.engine.chunks, 3)
    want_raw = _raw_outputs(reference.model)
    assert any(k.startswith("eval/subset/level/") for k in want_scalars)
    # The 28-task bench holds generation tasks only: this exercises generation (rank
    # classification under the layout is checked against transformers above).
    assert {r["kind"] for r in want_records} == {"generate"}
    history = (tmp_path / "ref" / "eval_history.jsonl").read_text()
    got = [json.loads((tmp_path / f"trainer{r}.json").read_text()) for r in range(4)]
    for name in TRAINER_RUNS:
        # fit() evaluated at step 2; global rank 0 alone wrote the history.
        assert (tmp_path / name / "eval_history.jsonl").read_text() == history, name
        dp = 2 if name == "pp2dp2" else 1
        for rank in range(4):
            res = got[rank][name]
            if rank % dp:  # tp=1 in both runs, so dp_rank = rank % dp: replica 1 skips
                assert res == {"scalars": {}, "records": None, "raw": None}, (name, rank)
                continue
            assert res["scalars"] == want_scalars, (name, rank)
            assert res["raw"]["generated"] == want_raw["generated"], (name, rank)
            for lls, want in zip(res["raw"]["log_likelihoods"], want_raw["log_likelihoods"],
                                 strict=True):
                assert lls == pytest.approx(want, abs=1e-3), (name, rank)
            for ours, want in zip(res["records"], want_records, strict=True):
                assert ours["prediction"] == want["prediction"], (name, rank)
                if want["kind"] == "rank":
                    assert ours["log_likelihoods"] == pytest.approx(want["log_likelihoods"],
                                                                    abs=1e-3)
