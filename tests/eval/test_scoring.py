"""Rank-classification log-likelihoods against transformers' OPT with the same weights."""

import pytest
import torch

from optiml_engine.eval.scoring import score_options


def _reference_log_likelihood(hf, prompt, option):
    ids = torch.tensor([prompt + option])
    with torch.no_grad():
        logp = torch.log_softmax(hf(ids).logits[0].double(), dim=-1)
    start = len(prompt)
    return sum(float(logp[start + j - 1, tok]) for j, tok in enumerate(option))


def _case(seed):
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(3, 300, (n,), generator=g).tolist()
    prompts = [[2, *rand(n)] for n in (6, 11, 3)]
    # 2 to 5 options per prompt, of 1 to 6 tokens each
    options = [[rand(1), rand(4)], [rand(3), rand(1), rand(6)], [rand(2), rand(5), rand(1),
                                                                 rand(3), rand(2)]]
    return prompts, options


@pytest.mark.parametrize("seed", [0, 1])
def test_option_log_likelihoods_match_transformers(tiny_models, seed):
    ours, hf = tiny_models
    prompts, options = _case(seed)
    got = score_options(ours, prompts, options)
    for prompt, opts, scores in zip(prompts, options, got, strict=True):
        want = [_reference_log_likelihood(hf, prompt, o) for o in opts]
        assert scores.token_counts == [len(o) for o in opts]
        assert scores.log_likelihoods == pytest.approx(want, abs=1e-4)
        norm = [w / len(o) for w, o in zip(want, opts, strict=True)]
        assert scores.normalized == pytest.approx(norm, abs=1e-4)
        assert scores.choice() == max(range(len(want)), key=want.__getitem__)
        assert scores.choice(length_normalize=True) == max(range(len(norm)),
                                                            key=norm.__getitem__)


def test_batching_does_not_change_scores(tiny_models):
    ours, _ = tiny_models
    prompts, options = _case(2)
    together = score_options(ours, prompts, options)
    for i in range(len(prompts)):
        alone = score_options(ours, [prompts[i]], [options[i]])[0]
        assert alone.log_likelihoods == pytest.approx(together[i].log_likelihoods, abs=1e-5)


def test_empty_option_is_rejected(tiny_models):
    with pytest.raises(ValueError):
        score_options(tiny_models[0], [[2, 5]], [[[7], []]])
