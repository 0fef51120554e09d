"""The one loader: the bench mixture (DP partition, window borders, resume) and a finite set
(epochs in the earlier order, the earlier state format)."""

from itertools import islice

import numpy as np
import pytest

from optiml_engine.data.loader import epoch_loader, mixture_loader
from optiml_engine.data.mixture import BenchMixture
from optiml_engine.data.sampling import SamplingSpec


def mixture(bench_dir):
    return BenchMixture(bench_dir / "out", SamplingSpec(scheme="eps", eps_cap=16), seed=3)


def loader(bench_dir, dp_rank=0, dp_size=1, window=40):
    return mixture_loader(mixture(bench_dir), seq_length=256, global_batch_size=4,
                          micro_batch_size=1, dp_rank=dp_rank, dp_size=dp_size, seed=3,
                          window=window)


def rows(batches):
    return [b["tokens"][i].numpy() for b in batches for i in range(len(b["tokens"]))]


def test_two_ranks_split_every_step_of_the_one_rank_stream(bench_dir):
    one, ranks = loader(bench_dir), [loader(bench_dir, r, 2) for r in range(2)]
    for _ in range(12):  # 40-example windows pack into a few samples: steps cross windows
        want = rows(one.next_step())
        got = rows(ranks[0].next_step()) + rows(ranks[1].next_step())
        assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))
    assert one.window_index >= 2


def test_resume_mid_window_continues_the_stream(bench_dir):
    straight = loader(bench_dir)
    for _ in range(5):
        straight.next_step()
    state = straight.state_dict()
    resumed = loader(bench_dir)
    resumed.load_state_dict(state)
    for _ in range(4):
        a, b = rows(straight.next_step()), rows(resumed.next_step())
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_window_packs_exactly_its_stream_examples(bench_dir):
    mix_loader = loader(bench_dir, window=10)
    packed, order = mix_loader.window(0)
    assert sorted(order.tolist()) == list(range(len(packed)))
    got = []
    for tokens, docs in zip(packed.tokens, packed.doc_ids, strict=True):
        for doc in np.unique(docs):
            example = tokens[docs == doc]
            if example[0] == 2:  # padding has a doc id of its own and starts with pad (1)
                got.append(tuple(example.tolist()))
    want = [(2, *src.tolist(), *tgt.tolist(), 2)
            for _, src, tgt in islice(mixture(bench_dir).positions(0), 10)]
    assert sorted(got) == sorted(want)


def test_batch_must_split_over_ranks():
    with pytest.raises(ValueError, match="not a multiple"):
        mixture_loader(None, 256, global_batch_size=3, micro_batch_size=2)


def finite(n_examples=23, seed=4):
    from optiml_engine.data.packing import pack_examples

    rng = np.random.default_rng(seed)
    examples = [(list(rng.integers(3, 200, rng.integers(3, 20))), list(rng.integers(3, 200, 4)))
                for _ in range(n_examples)]
    return pack_examples(examples, 32)


def test_finite_set_serves_seeded_epochs_and_splits_each_step_over_ranks():
    samples = finite()
    n = len(samples)
    assert n % 4  # so steps straddle epochs
    # The stream: epoch e is the permutation of default_rng([seed, e]), one after another.
    stream = np.concatenate([np.random.default_rng([7, e]).permutation(n) for e in range(4)])
    one = epoch_loader(samples, 4, 2, seed=7)
    ranks = [epoch_loader(samples, 4, 1, r, 2, seed=7) for r in range(2)]
    for step in range(2 * n // 4 + 1):
        want = samples.tokens[stream[4 * step: 4 * step + 4]]
        assert np.array_equal(np.stack(rows(one.next_step())), want)
        got = rows(ranks[0].next_step()) + rows(ranks[1].next_step())
        assert np.array_equal(np.stack(got), want)
    plain = epoch_loader(samples, 4, 4, shuffle=False)
    assert np.array_equal(np.stack(rows(plain.next_step())), samples.tokens[:4])


def test_finite_set_resumes_from_the_earlier_consumed_state():
    samples = finite()
    straight = epoch_loader(samples, 4, 2, seed=1)
    for _ in range(5):
        straight.next_step()
    resumed = epoch_loader(samples, 4, 2, seed=1)
    resumed.load_state_dict({"consumed": 20})  # what checkpoints of the former loader hold
    for _ in range(3):
        a, b = rows(straight.next_step()), rows(resumed.next_step())
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
