"""Packed micro-batches from the bench mixture: DP partition, window borders, resume."""

from itertools import islice

import numpy as np
import pytest

from optiml_engine.data.mixture import BenchMixture
from optiml_engine.data.mixture_loader import MixtureLoader
from optiml_engine.data.sampling import SamplingSpec


def loader(bench_dir, dp_rank=0, dp_size=1, window=40):
    mixture = BenchMixture(bench_dir / "out", SamplingSpec(scheme="eps", eps_cap=16), seed=3)
    return MixtureLoader(mixture, seq_length=256, global_batch_size=4, micro_batch_size=1,
                         dp_rank=dp_rank, dp_size=dp_size, seed=3, window=window)


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
    packed, order = mix_loader.samples(0)
    assert sorted(order.tolist()) == list(range(len(packed)))
    got = []
    for tokens, docs in zip(packed.tokens, packed.doc_ids, strict=True):
        for doc in np.unique(docs):
            example = tokens[docs == doc]
            if example[0] == 2:  # padding has a doc id of its own and starts with pad (1)
                got.append(tuple(example.tolist()))
    want = [(2, *src.tolist(), *tgt.tolist(), 2)
            for _, src, tgt in islice(mix_loader.mixture.positions(0), 10)]
    assert sorted(got) == sorted(want)


def test_batch_must_split_over_ranks():
    with pytest.raises(ValueError, match="not a multiple"):
        MixtureLoader(None, 256, global_batch_size=3, micro_batch_size=2)
