"""Greedy decoding against transformers' generate(do_sample=False) with the same weights."""

import pytest
import torch

from optiml_engine.eval.generate import greedy_generate


def _prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[2, *torch.randint(3, 300, (n,), generator=g).tolist()] for n in lengths]


def _reference(hf, prompts, max_new_tokens, eos_id):
    """transformers with left padding and an attention mask; output cut at the first eos."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[1] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                          max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=1)
    result = []
    for row in out[:, width:].tolist():
        result.append(row[: row.index(eos_id)] if eos_id in row else row)
    return result


@pytest.mark.parametrize("lengths", [(7,), (5, 9, 3, 12), (6, 6, 6, 6)],
                         ids=["batch1", "batch4_padded", "batch4_unpadded"])
def test_greedy_equals_transformers(tiny_models, lengths):
    ours, hf = tiny_models
    prompts = _prompts(lengths)
    want = _reference(hf, prompts, 16, eos_id=2)
    assert greedy_generate(ours, prompts, max_new_tokens=16) == want
    assert all(len(w) == 16 for w in want)  # the random model never says </s> here


def test_rows_stop_at_their_own_eos(tiny_models):
    ours, hf = tiny_models
    prompts = _prompts((5, 9, 3, 12))
    free = _reference(hf, prompts, 16, eos_id=2)
    stop = free[1][6]  # a token that row 1 produces at step 6: make it the stop token
    want = _reference(hf, prompts, 16, eos_id=stop)
    got = greedy_generate(ours, prompts, max_new_tokens=16, eos_id=stop)
    assert got == want
    # Each row stops just before its own first `stop` (row 1 says it first at step 4, row 3 at
    # step 1); rows 0 and 2 never say it and run the full 16 tokens.
    assert [len(g) for g in got] == [f.index(stop) if stop in f else 16 for f in free]
    assert [len(g) for g in got] == [16, 4, 16, 1]


def test_generation_is_capped_by_the_position_table(tiny_models):
    ours, hf = tiny_models
    prompt = _prompts((60,))  # 61 tokens at positions 0..60; the table has 64 positions
    # Tokens 1..4 are predicted at positions 60..63; a 5th would need position 64. The random
    # model says no </s> in those 4 steps, so exactly 4 tokens come out, as transformers gives.
    got = greedy_generate(ours, prompt, max_new_tokens=50)
    assert got == _reference(hf, prompt, 64 - 61 + 1, eos_id=2)
    assert len(got[0]) == 4


def test_preallocated_cache_grows_and_selects_like_the_full_forward(tiny_models):
    from optiml_engine.model.kv_cache import KVCache

    ours, _ = tiny_models
    ids = torch.randint(3, 300, (3, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = ours(ids)
        cache = KVCache(capacity=2)  # far too small: the buffers must grow
        steps = [ours(ids[:, :4], kv_cache=cache)]
        cache.select(torch.tensor([2, 0]))  # keep rows 2 and 0, in that order
        for t in range(4, 10):
            steps.append(ours(ids[[2, 0], t:t + 1], kv_cache=cache))
    got = torch.cat([steps[0][[2, 0]], *steps[1:]], dim=1)
    torch.testing.assert_close(got, full[[2, 0]], rtol=1e-5, atol=1e-5)
    assert cache.length == 10
