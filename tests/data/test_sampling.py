"""Mixture sampling: proportions, EPS caps, benchmark shares and mixes, determinism, resume and
data-parallel partition exactness."""

import collections

import numpy as np
import pytest

from optiml_engine.data.sampling import (
    BLOCK,
    MixtureStream,
    SamplingSpec,
    mixture_probabilities,
)
from optiml_engine.errors import OptimlError

SIZES = [100_000, 4096, 1000, 50, 20_000, 7, 3000]
GROUPS = ["superni", "superni", "superni", "promptsource", "promptsource", "reasoning", "flan"]


def empirical(probs, sizes, n=100_000, seed=0):
    stream = MixtureStream(sizes, probs, seed)
    counts = collections.Counter(t for _, t, _ in stream.take(n))
    return np.array([counts[i] / n for i in range(len(sizes))])


def test_eps_caps_and_proportions_over_100k_draws():
    spec = SamplingSpec(scheme="eps", eps_cap=4096)
    probs = mixture_probabilities(SIZES[:5], GROUPS[:5], spec)
    capped = np.minimum(SIZES[:5], 4096).astype(float)
    np.testing.assert_allclose(probs, capped / capped.sum())
    assert probs[0] == probs[1]  # a 100k task is capped to the same weight as a 4096 one
    assert np.abs(empirical(probs, SIZES[:5]) - probs).max() < 0.01


@pytest.mark.parametrize("scheme,expected", [
    ("proportional", lambda s: s),
    ("uniform", lambda s: np.ones_like(s)),
    ("temperature", lambda s: s ** 0.5),
])
def test_schemes(scheme, expected):
    sizes = np.array(SIZES[:5], dtype=float)
    probs = mixture_probabilities(SIZES[:5], GROUPS[:5], SamplingSpec(scheme=scheme,
                                                                        temperature=2.0))
    np.testing.assert_allclose(probs, expected(sizes) / expected(sizes).sum())
    assert np.abs(empirical(probs, SIZES[:5], seed=1) - probs).max() < 0.01


def test_benchmark_proportions_and_mixes():
    spec = SamplingSpec(scheme="eps", eps_cap=4096, mixes={"reasoning": 10.0},
                        benchmark_proportions={"superni": 25, "promptsource": 45, "flan": 20,
                                               "t5": 10})  # t5 absent: renormalised away
    probs = mixture_probabilities(SIZES, GROUPS, spec)
    by_group = collections.defaultdict(float)
    for g, p in zip(GROUPS, probs, strict=True):
        by_group[g] += p
    assert by_group["reasoning"] == pytest.approx(0.10)
    assert by_group["superni"] == pytest.approx(0.90 * 25 / 90)
    assert by_group["promptsource"] == pytest.approx(0.90 * 45 / 90)
    assert by_group["flan"] == pytest.approx(0.90 * 20 / 90)
    # inside a benchmark, EPS weights: 4096 : 4096 : 1000
    assert probs[0] / probs[2] == pytest.approx(4.096)
    emp = empirical(probs, SIZES, seed=2)
    assert np.abs(emp - probs).max() < 0.01
    got = collections.defaultdict(float)
    for g, p in zip(GROUPS, emp, strict=True):
        got[g] += p
    assert abs(got["reasoning"] - 0.10) < 0.01 and abs(got["promptsource"] - 0.45) < 0.01


def test_bad_mixes_are_user_errors():
    with pytest.raises(OptimlError, match="no dialogue tasks"):
        mixture_probabilities(SIZES, GROUPS, SamplingSpec(mixes={"dialogue": 5}))
    with pytest.raises(OptimlError, match="no proportion for benchmark"):
        mixture_probabilities(SIZES, GROUPS, SamplingSpec(benchmark_proportions={"superni": 1}))
    with pytest.raises(OptimlError, match="unknown scheme"):
        mixture_probabilities(SIZES, GROUPS, SamplingSpec(scheme="zipf"))


def test_deterministic_and_seed_dependent():
    probs = mixture_probabilities(SIZES, GROUPS, SamplingSpec())
    a = MixtureStream(SIZES, probs, 5).take(1000)
    assert a == MixtureStream(SIZES, probs, 5).take(1000)
    assert a != MixtureStream(SIZES, probs, 6).take(1000)


def test_resume_mid_stream_gives_the_same_continuation():
    probs = mixture_probabilities(SIZES, GROUPS, SamplingSpec())
    full = MixtureStream(SIZES, probs, 3).take(BLOCK + 5000)
    for start in (0, 17, BLOCK - 3, BLOCK + 11):
        resumed = MixtureStream(SIZES, probs, 3).take(2000, position=start)
        assert resumed == full[start:start + 2000]


def test_dp_partition_union_equals_single_rank_stream():
    probs = mixture_probabilities(SIZES, GROUPS, SamplingSpec())
    n = 2 * BLOCK + 1000  # crosses block boundaries at odd offsets
    single = MixtureStream(SIZES, probs, 9).take(n)
    ranks = [MixtureStream(SIZES, probs, 9).take(n // 4, dp_rank=r, dp_size=4) for r in range(4)]
    merged = sorted(x for rank in ranks for x in rank)
    assert merged == single
    assert all(p % 4 == r for r, rank in enumerate(ranks) for p, _, _ in rank)
    # a rank resumed at a global position continues its own sub-stream
    resumed = MixtureStream(SIZES, probs, 9).take(100, position=4 * 500 + 1, dp_rank=2, dp_size=4)
    assert resumed == ranks[2][500:600]  # positions 2002, 2006, ...


def test_each_pass_over_a_task_visits_every_instance_once():
    sizes, groups = [7, 13], ["a", "a"]
    stream = MixtureStream(sizes, mixture_probabilities(sizes, groups, SamplingSpec(
        scheme="uniform")), 0)
    seen = collections.defaultdict(list)
    for _, task, inst in stream.take(2000):
        seen[task].append(inst)
    for task, n in enumerate(sizes):
        insts = seen[task]
        for e in range(len(insts) // n):
            assert sorted(insts[e * n:(e + 1) * n]) == list(range(n))
