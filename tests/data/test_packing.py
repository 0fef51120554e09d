"""The C++ packer against hand-computed cases and the pure-Python reference packer."""

import numpy as np
import pytest

from optiml_engine import _C
from optiml_engine.data.packing import PackedSamples, pack_examples, pack_lengths
from tests.data.reference_packer import reference_pack_examples, reference_pack_lengths


def as_lists(bins):
    return [b.tolist() for b in bins]


def instruction_like_lengths(rng, n, capacity=2048):
    """Most examples under 300 tokens (log-normal body), 5% spread up to the capacity."""
    body = rng.lognormal(mean=np.log(120), sigma=0.8, size=n)
    tail = rng.uniform(300, capacity, size=n)
    lengths = np.where(rng.random(n) < 0.05, tail, body)
    return np.clip(lengths.astype(np.int64), 4, capacity)


def test_pack_lengths_hand_computed():
    # Decreasing: 7(#4) 5(#0) 3(#1) 3(#2) 2(#3) 1(#5). 7 -> new bin 0 (1 free); 5 -> new bin 1
    # (3 free); 3 fills bin 1; 3 -> new bin 2 (5 free); 2 -> bin 2 (3 free); 1 -> bin 0 (1 free is
    # tighter than bin 2's 3).
    assert as_lists(pack_lengths(np.array([5, 3, 3, 2, 7, 1]), 8)) == [[4, 5], [0, 1], [2, 3]]
    # Equal free space in bins 0 and 1: the lower bin wins.
    assert as_lists(pack_lengths(np.array([6, 6, 2]), 8)) == [[0, 2], [1]]
    assert as_lists(pack_lengths(np.array([8, 8]), 8)) == [[0], [1]]
    assert pack_lengths(np.zeros(0, dtype=np.int64), 8) == []


def test_pack_lengths_output_types():
    bins = pack_lengths(np.array([3, 1, 2], dtype=np.int32), 4)
    assert all(b.dtype == np.int64 and b.ndim == 1 for b in bins)
    assert as_lists(bins) == [[0, 1], [2]]


@pytest.mark.parametrize("lengths, message", [
    ([3, 9, 2], "example 1 has length 9"),
    ([3, 0], "example 1 has length 0"),
    ([-1], "example 0 has length -1"),
])
def test_pack_lengths_rejects_lengths_outside_capacity(lengths, message):
    with pytest.raises(ValueError, match=message):
        pack_lengths(np.array(lengths), 8)


def test_pack_lengths_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        pack_lengths(np.ones((2, 2), dtype=np.int64), 8)
    with pytest.raises(ValueError, match="integers"):
        pack_lengths(np.array([1.5, 2.0]), 8)
    with pytest.raises(ValueError, match="capacity"):
        pack_lengths(np.array([1]), 0)
    with pytest.raises(ValueError, match="example 0"):  # the C++ side checks on its own too
        _C.pack_lengths(np.array([9]), 8)


def random_lengths(rng, capacity):
    n = int(rng.integers(0, 250))
    kind = rng.integers(0, 3)
    if kind == 0:  # anything, including 1 and == capacity
        return rng.integers(1, capacity + 1, size=n)
    if kind == 1:  # few distinct values: many ties in length and in free space
        return rng.choice(np.unique(rng.integers(1, capacity + 1, size=3)), size=n)
    return np.minimum(rng.geometric(min(1.0, 4.0 / capacity), size=n), capacity)  # mostly short


@pytest.mark.parametrize("seed", range(8))
def test_pack_lengths_equals_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        capacity = int(rng.choice([1, 2, 7, 64, 2048, int(rng.integers(1, 5000))]))
        lengths = random_lengths(rng, capacity)
        expected = reference_pack_lengths(lengths, capacity)
        assert as_lists(pack_lengths(lengths, capacity)) == expected
        # The ordered-set placement (used above 2**20 tokens per sample) must agree too.
        flat, offsets = _C.pack_lengths(lengths.astype(np.int64), capacity, True)
        assert [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)] == (
            expected)


def test_pack_lengths_huge_capacity_equals_reference():
    rng = np.random.default_rng(123)
    capacity = 3 * 2**20  # above the bucketed limit: comparison sort and ordered set
    lengths = np.concatenate([rng.integers(1, capacity + 1, size=150), [capacity, 1, 1]])
    assert as_lists(pack_lengths(lengths, capacity)) == reference_pack_lengths(lengths, capacity)


def test_pack_lengths_larger_input_equals_reference():
    rng = np.random.default_rng(7)
    lengths = instruction_like_lengths(rng, 1500, capacity=512)
    assert as_lists(pack_lengths(lengths, 512)) == reference_pack_lengths(lengths, 512)


def test_pack_lengths_efficiency_on_instruction_like_lengths():
    rng = np.random.default_rng(0)
    lengths = instruction_like_lengths(rng, 20_000)
    assert np.mean(lengths < 300) > 0.8 and lengths.max() > 1500
    bins = pack_lengths(lengths, 2048)
    assert sorted(np.concatenate(bins).tolist()) == list(range(len(lengths)))
    assert max(int(lengths[b].sum()) for b in bins) <= 2048
    efficiency = lengths.sum() / (len(bins) * 2048)
    assert efficiency >= 0.99, efficiency


def test_pack_examples_hand_computed():
    examples = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13]), (list(range(20, 40)), [3])]
    packed = pack_examples(examples, seq_length=10)
    # Lengths 7, 6 and 22 -> the third keeps its 7 newest source tokens (33..39) to reach 10.
    # Bins: [#2] (10), [#0] (7), [#1] (6): nothing else fits next to another.
    assert packed.tokens.tolist() == [
        [2, 33, 34, 35, 36, 37, 38, 39, 3, 2],
        [2, 5, 6, 7, 8, 9, 2, 1, 1, 1],
        [2, 10, 11, 12, 13, 2, 1, 1, 1, 1],
    ]
    assert packed.labels.tolist() == [
        [33, 34, 35, 36, 37, 38, 39, 3, 2, 1],
        [5, 6, 7, 8, 9, 2, 1, 1, 1, 1],
        [10, 11, 12, 13, 2, 1, 1, 1, 1, 1],
    ]
    assert packed.loss_mask.tolist() == [
        [0, 0, 0, 0, 0, 0, 0, 1, 1, 0],  # predicts 3 and the closing </s>
        [0, 0, 0, 1, 1, 1, 0, 0, 0, 0],  # predicts 8, 9, </s>
        [0, 1, 1, 1, 1, 0, 0, 0, 0, 0],  # predicts 11, 12, 13, </s>
    ]
    assert packed.position_ids.tolist() == [
        list(range(10)), [0, 1, 2, 3, 4, 5, 6, 0, 0, 0], [0, 1, 2, 3, 4, 5, 0, 0, 0, 0]]
    assert packed.doc_ids.tolist() == [[0] * 10, [0] * 7 + [1] * 3, [0] * 6 + [1] * 4]
    assert (packed.num_examples, packed.num_truncated, packed.num_dropped) == (3, 1, 0)
    assert packed.efficiency == pytest.approx(23 / 30)
    assert len(packed) == 3


def test_pack_examples_shares_rows_and_drops_overlong_targets():
    examples = [([4], [5]), ([], [6, 7]), ([8, 9], list(range(10, 20)))]  # last: target 10 > 8
    packed = pack_examples(examples, seq_length=8, eos_id=2, pad_id=0)
    # Both kept examples have length 4: the lower index is placed first.
    assert packed.tokens.tolist() == [[2, 4, 5, 2, 2, 6, 7, 2]]
    assert packed.doc_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    assert packed.labels.tolist() == [[4, 5, 2, 0, 6, 7, 2, 0]]
    assert packed.loss_mask.tolist() == [[0, 1, 1, 0, 1, 1, 1, 0]]
    assert (packed.num_examples, packed.num_truncated, packed.num_dropped) == (2, 0, 1)
    assert packed.efficiency == 1.0


def test_pack_examples_types_and_empty_input():
    packed = pack_examples([(np.array([3, 4]), np.array([5]))], seq_length=6)
    assert isinstance(packed, PackedSamples)
    for name in ("tokens", "labels", "position_ids", "doc_ids"):
        assert getattr(packed, name).dtype == np.int64
    assert packed.loss_mask.dtype == np.float32
    empty = pack_examples([], seq_length=16)
    assert empty.tokens.shape == (0, 16) and len(empty) == 0 and empty.efficiency == 0.0
    with pytest.raises(ValueError, match="seq_length"):
        pack_examples([([1], [2])], seq_length=1)


def random_examples(rng, seq_length):
    examples = []
    for _ in range(int(rng.integers(0, 60))):
        kind = rng.integers(0, 4)
        if kind == 0:  # fits as is, sometimes exactly (L == seq_length)
            n_tgt = int(rng.integers(0, seq_length - 1))
            n_src = int(rng.integers(0, seq_length - 1 - n_tgt))
        elif kind == 1:  # source too long: left-truncated
            n_tgt = int(rng.integers(0, seq_length - 1))
            n_src = int(rng.integers(seq_length - 1 - n_tgt, 2 * seq_length))
        elif kind == 2:  # target too long: dropped
            n_tgt, n_src = int(rng.integers(seq_length - 1, 2 * seq_length)), 3
        else:  # short
            n_tgt, n_src = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        examples.append((rng.integers(3, 1000, size=n_src).tolist(),
                         rng.integers(3, 1000, size=n_tgt).tolist()))
    return examples


@pytest.mark.parametrize("seed", range(8))
def test_pack_examples_equals_reference(seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(12):
        seq_length = int(rng.choice([2, 3, 16, 64, int(rng.integers(2, 300))]))
        examples = random_examples(rng, seq_length)
        eos_id, pad_id = (2, 1) if rng.random() < 0.5 else (0, 7)
        packed = pack_examples(examples, seq_length, eos_id=eos_id, pad_id=pad_id)
        expected = reference_pack_examples(examples, seq_length, eos_id=eos_id, pad_id=pad_id)
        for name in ("tokens", "labels", "loss_mask", "position_ids", "doc_ids"):
            np.testing.assert_array_equal(getattr(packed, name), expected[name], err_msg=name)
        for name in ("num_examples", "num_truncated", "num_dropped"):
            assert getattr(packed, name) == expected[name], name
        assert packed.efficiency == pytest.approx(expected["efficiency"], rel=1e-12)


def test_pack_examples_efficiency_and_target_coverage_on_instruction_like_data():
    rng = np.random.default_rng(1)
    lengths = instruction_like_lengths(rng, 20_000)
    n_tgt = rng.integers(1, lengths - 1)  # at least one target token per example
    examples = [(np.full(n - 2 - t, 5), np.full(t, 6)) for n, t in zip(lengths, n_tgt, strict=True)]
    packed = pack_examples(examples, 2048)
    assert packed.num_truncated == packed.num_dropped == 0
    assert packed.efficiency >= 0.99, packed.efficiency
    # Every target token and every closing </s> is predicted exactly once, and nothing else is.
    assert packed.loss_mask.sum() == n_tgt.sum() + len(examples)
    assert np.all(packed.labels[packed.loss_mask == 1] != 5)


def test_fill_samples_rejects_out_of_range_input():
    one = np.array([0], dtype=np.int64)
    args = dict(src=np.array([5]), src_begin=one, src_keep=np.array([1]), tgt=np.array([6]),
                tgt_begin=one, tgt_len=np.array([1]), bin_flat=one, bin_offsets=np.array([0, 1]),
                seq_length=4, eos_id=2, pad_id=1)
    tokens = _C.fill_samples(**args)[0]
    assert tokens.tolist() == [[2, 5, 6, 2]]
    for key, bad, message in [("src_keep", np.array([2]), "source range"),
                              ("bin_flat", np.array([1]), "out of range"),
                              ("bin_offsets", np.array([0, 2]), "bin_offsets"),
                              ("seq_length", 3, "overflow")]:
        with pytest.raises(ValueError, match=message):
            _C.fill_samples(**{**args, key: bad})
