"""The bench training stream: examples come from training instances only, follow the mixture,
partition over data-parallel ranks and resume exactly; recipe fields map to the sampling spec."""

import collections
import itertools

import numpy as np
import pytest
import yaml

from optiml_engine.config import DataConfig, load_recipe
from optiml_engine.data.bench_store import BuiltBench
from optiml_engine.data.mixture import (
    BenchMixture,
    parse_proportions,
    sampling_spec,
    training_stream,
)
from optiml_engine.data.prompts import render
from optiml_engine.data.sampling import SamplingSpec
from optiml_engine.data.tokenizer import load_tokenizer
from optiml_engine.errors import OptimlError


def test_stream_examples_are_training_instances_only(bench_dir):
    out = bench_dir / "out"
    bench = BuiltBench(out)
    tok = load_tokenizer("byte")
    allowed = set()
    for task in bench.tasks(["train"]):
        held = set(task.meta["eval_ids"])
        train = [i for i in task.instances if i.id not in held]
        allowed.update(render(task, i, seed=0, pool=train) for i in train)
    eval_inputs = {(t.name, i.input) for level in bench.eval_sets().values() for t, insts in level
                   for i in insts}
    assert eval_inputs
    seen = set()
    for src, tgt in itertools.islice(training_stream(out, SamplingSpec(), tok, seed=3), 3000):
        pair = (tok.decode(src), tok.decode(tgt))
        assert pair in allowed
        seen.add(pair)
    assert len(seen) > len(allowed) * 0.9  # 3000 draws cover nearly all ~440 examples


def test_stream_follows_the_mixture_and_partitions_over_ranks(bench_dir):
    out = bench_dir / "out"
    mix = BenchMixture(out, SamplingSpec(scheme="uniform"), seed=4)
    train_tasks = [i for i, n in enumerate(mix.sizes) if n > 0]
    assert np.allclose(mix.probabilities[train_tasks], 1 / len(train_tasks))
    assert mix.probabilities[[i for i, n in enumerate(mix.sizes) if n == 0]].sum() == 0
    single = [(p, bytes(s), bytes(t)) for p, s, t in itertools.islice(mix.positions(), 4000)]
    ranks = [[(p, bytes(s), bytes(t)) for p, s, t in itertools.islice(
        BenchMixture(out, SamplingSpec(scheme="uniform"), seed=4).positions(0, r, 4), 1000)]
        for r in range(4)]
    assert sorted(x for rank in ranks for x in rank) == single
    resumed = list(itertools.islice(mix.positions(2001, 1, 4), 50))
    assert [(p, bytes(s), bytes(t)) for p, s, t in resumed] == ranks[1][500:550]
    counts = collections.Counter(mix.bench.index[mix.offsets[t]][4] for _, t, _ in
                                 mix.stream.take(20_000))
    assert set(counts) == set(train_tasks)


def test_tokenizer_mismatch_is_a_user_error(bench_dir):
    class Other:
        vocab_size = 50272

    with pytest.raises(OptimlError, match="tokenised with 'byte'"):
        BenchMixture(bench_dir / "out", SamplingSpec(), 0, Other())


def test_data_config_fields_make_the_sampling_spec():
    data = DataConfig(bench="somewhere", sampling="eps", eps_cap=4096, mix_reasoning=1,
                      mix_pretraining=5, benchmark_proportions=["superni=25", "promptsource=45"])
    spec = sampling_spec(data)
    assert spec.benchmark_proportions == {"superni": 25.0, "promptsource": 45.0}
    assert spec.mixes == {"reasoning": 1.0, "pretraining": 5.0, "dialogue": 0.0}
    assert spec.eps_cap == 4096 and spec.scheme == "eps"
    with pytest.raises(OptimlError, match="benchmark_proportions"):
        parse_proportions(["superni:25"])


@pytest.mark.slow  # load_recipe validates the model, which imports torch (~5 s cold)
def test_recipe_yaml_reads_the_mixture_fields(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"preset": "125m"}, "data": {
        "bench": "somewhere", "sampling": "temperature", "temperature": 2,
        "benchmark_proportions": ["superni=25", "flan=20"], "mix_pretraining": 5}}))
    spec = sampling_spec(load_recipe(recipe).data)
    assert spec.scheme == "temperature" and spec.temperature == 2.0
    assert spec.benchmark_proportions == {"superni": 25.0, "flan": 20.0}
    with pytest.raises(OptimlError, match="sampling"):
        load_recipe(recipe, ["data.sampling=zipf"])
