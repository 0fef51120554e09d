"""The three OPT-IML training recipes train on a bench built by `recipes/bench/opt-iml.yaml`, with
the paper's mixture (§4.2-4.6, §5): each recipe, with a tiny model and a tiny built bench
overridden in, trains 2 steps through the real loader and trainer, and the stream it draws from
gives every benchmark the recipe's share."""

import math
from collections import Counter
from pathlib import Path

import pytest

from optiml_engine.config import load_recipe
from optiml_engine.data.bench import build_bench
from optiml_engine.data.bench_store import BuiltBench
from optiml_engine.data.dataset import build_loader
from optiml_engine.data.mixture import BenchMixture, sampling_spec
from optiml_engine.data.tokenizer import load_tokenizer
from optiml_engine.training.trainer import Trainer
from tests.data.opt_iml_collection import write_collection

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ["1.3b", "30b", "175b"]
# The paper's final mixture, written out by hand: 1% reasoning and 5% pre-training text are
# percent of the whole stream; the benchmark proportions 4/2/20/25/45/2/2 share the other 94%.
PAPER_SHARES = {"crossfit": 4, "exmix": 2, "flan": 20, "superni": 25, "promptsource": 45,
                "t5": 2, "unifiedskg": 2}
EXPECTED_PERCENT = {**{b: 0.94 * p for b, p in PAPER_SHARES.items()}, "reasoning": 1.0,
                    "pretraining": 5.0}

TINY = ["model.preset=null", "model.hf_path=null", "model.vocab_size=264", "model.hidden_size=32",
        "model.num_layers=2", "model.num_heads=4", "model.max_position_embeddings=256",
        "data.tokenizer=byte", "data.seq_length=256", "parallel.tp=1", "train.steps=2",
        "train.global_batch_size=4", "train.micro_batch_size=2", "checkpoint.dir=null",
        "checkpoint.load=null", "logging.interval=1"]


@pytest.fixture(scope="module")
def opt_iml_bench(tmp_path_factory):
    """The bench recipe itself, built over a tiny collection with the byte tokenizer."""
    tmp = tmp_path_factory.mktemp("optiml-bench")
    write_collection(tmp / "collections")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTIML_DATA", str(tmp / "collections"))
        mp.setenv("OPT_TOKENIZER", "byte")
        manifest = build_bench(ROOT / "recipes/bench/opt-iml.yaml", tmp / "bench")
    assert set(manifest["benchmarks"]) == set(EXPECTED_PERCENT)
    return tmp / "bench"


def tiny(size: str, bench: Path, tmp_path: Path, *more: str):
    return load_recipe(ROOT / f"recipes/opt-iml-{size}.yaml",
                       [*TINY, f"data.bench={bench}", f"logging.dir={tmp_path / 'tb'}", *more])


@pytest.mark.parametrize("size", RECIPES)
def test_recipe_holds_the_papers_mixture_and_trains_on_a_bench(size):
    recipe = load_recipe(ROOT / f"recipes/opt-iml-{size}.yaml")
    data = recipe.data
    assert data.bench == "runs/bench-opt-iml" and data.train_path is None
    assert (data.sampling, data.eps_cap) == ("eps", 4096)
    assert sorted(data.benchmark_proportions) == sorted(f"{b}={p}" for b, p in
                                                        PAPER_SHARES.items())
    assert (data.mix_reasoning, data.mix_pretraining, data.mix_dialogue) == (1, 5, 0)
    assert (recipe.optim.lr, recipe.optim.warmup_steps, recipe.precision.dtype) == \
        (5e-5, 60, "fp16")


@pytest.mark.parametrize("size", RECIPES)
def test_recipe_trains_two_steps_on_a_built_bench(size, opt_iml_bench, tmp_path):
    trainer = Trainer(tiny(size, opt_iml_bench, tmp_path), verbose=False)
    metrics = trainer.fit()
    assert trainer.step == 2 and len(metrics) == 2
    assert all(math.isfinite(m["loss"]) and m["target_tokens"] > 0 for m in metrics)
    # 2 steps x 4 samples taken from the first window of the bench's mixture stream
    assert trainer.loader.state_dict() == {"window_index": 0, "used": 8}
    assert "bench mixture" in trainer.loader.describe()


def test_the_recipes_loader_serves_the_benchs_training_examples(opt_iml_bench, tmp_path):
    """Every example packed into a step is one of the bench's rendered training rows (whole,
    or missing the oldest source tokens when it was cut to fit), read here straight from the
    shards."""
    recipe = tiny("30b", opt_iml_bench, tmp_path)
    bench = BuiltBench(opt_iml_bench)
    # byte tokenizer: id = byte + 4, so each row is a byte string; rows joined by a separator
    rows = b"\0".join(bytes(int(t) - 4 for part in bench.example(r) for t in part)
                         for r in range(bench.manifest["counts"]["train_examples"]))
    docs = 0
    for batch in build_loader(recipe, load_tokenizer("byte")).next_step():
        for tokens, doc_ids in zip(batch["tokens"].tolist(), batch["doc_ids"].tolist(),
                                   strict=True):
            for doc in sorted(set(doc_ids)):
                ids = [t for t, d in zip(tokens, doc_ids, strict=True) if d == doc and t > 3]
                if ids:  # not padding
                    docs += 1
                    assert bytes(t - 4 for t in ids) in rows
    assert docs >= 4


@pytest.mark.parametrize("size", RECIPES)
def test_realised_benchmark_shares_are_the_recipes_within_one_point(size, opt_iml_bench,
                                                                    tmp_path):
    recipe = tiny(size, opt_iml_bench, tmp_path)
    mixture = BenchMixture(opt_iml_bench, sampling_spec(recipe.data), recipe.train.seed)
    benchmark_of = [t["benchmark"] for t in mixture.bench.manifest["tasks"]]
    draws = Counter(benchmark_of[task] for _, task, _ in mixture.stream.take(20_000))
    assert set(draws) == set(EXPECTED_PERCENT)
    for benchmark, expected in EXPECTED_PERCENT.items():
        assert abs(100 * draws[benchmark] / 20_000 - expected) < 1.0, benchmark


def test_a_benchmark_the_bench_lacks_is_said_once_and_its_share_goes_to_the_others(
        opt_iml_bench, tmp_path):
    recipe = tiny("30b", opt_iml_bench, tmp_path, "data.benchmark_proportions=[crossfit=4, "
                  "exmix=2, flan=20, superni=25, promptsource=45, t5=2, unifiedskg=2, xfit=10]")
    trainer = Trainer(recipe, verbose=False)
    assert trainer.loader.describe().count("no training tasks of xfit in the bench") == 1
    mixture = BenchMixture(opt_iml_bench, sampling_spec(recipe.data), 0)
    share = sum(p for t, p in zip(mixture.bench.manifest["tasks"], mixture.probabilities,
                                  strict=True) if t["benchmark"] == "promptsource")
    assert share == pytest.approx(0.94 * 45 / 100)  # xfit's 10 shared out: 45 of the 100 left
