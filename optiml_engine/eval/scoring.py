"""Rank classification: which answer option does the model find most likely after the prompt?

For a batch of prompts, each with its own options, the prompts run once (left-padded, into a KV
cache); the cache rows are then repeated once per option and all options of all prompts run as
one right-padded batch on top of it. The prompt is therefore computed once, however many options
it has; each option attends to its own prompt and to its own earlier tokens only.

The log-likelihood of option o = (o_1..o_n) is sum_j log p(o_j | prompt, o_<j). The choice is its
argmax, or the argmax of the per-token mean with `length_normalize` (favouring no option length).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from optiml_engine.eval.batching import REAL_DOC, left_pad, right_pad, token_log_probs
from optiml_engine.model.kv_cache import KVCache


@dataclass
class OptionScores:
    log_likelihoods: list[float]  # summed over each option's tokens
    token_counts: list[int]

    @property
    def normalized(self) -> list[float]:
        return [ll / n for ll, n in zip(self.log_likelihoods, self.token_counts, strict=True)]

    def choice(self, length_normalize: bool = False) -> int:
        values = self.normalized if length_normalize else self.log_likelihoods
        return max(range(len(values)), key=values.__getitem__)


@torch.no_grad()
def score_options(model, prompts: list[list[int]], options: list[list[list[int]]],
                  pad_id: int = 1) -> list[OptionScores]:
    """Log-likelihoods of every option of every prompt; `options[i]` are prompt i's candidates."""
    if len(prompts) != len(options):
        raise ValueError("one list of options per prompt")
    if any(not opts for opts in options) or any(not o for opts in options for o in opts):
        raise ValueError("every prompt needs options and every option at least one token")
    device = next(model.parameters()).device
    # A pipeline-parallel model (eval/pipeline_eval.py) scores on its last stage and broadcasts.
    log_probs = getattr(model, "token_log_probs", None) or functools.partial(token_log_probs,
                                                                             model)
    ids, position_ids, doc_ids, lengths = left_pad(prompts, pad_id, device)
    cache = KVCache()
    last_hidden = model.hidden_states(ids, position_ids, doc_ids, kv_cache=cache)[:, -1]

    owner = torch.tensor([i for i, opts in enumerate(options) for _ in opts], device=device)
    flat = [o for opts in options for o in opts]
    opt_ids, real = right_pad(flat, pad_id, device)
    # The prediction of option token j comes from the prompt's last position (j = 0) or from
    # option token j-1, so the last option token never needs to be fed.
    step_hidden = [last_hidden[owner][:, None]]  # [R, 1, E]
    if opt_ids.shape[1] > 1:
        cache.select(owner)
        fed = opt_ids[:, :-1]
        fed_positions = lengths[owner][:, None] + torch.arange(fed.shape[1], device=device)
        fed_docs = torch.full_like(fed, REAL_DOC)
        step_hidden.append(model.hidden_states(fed, fed_positions, fed_docs, kv_cache=cache))
    token_lp = log_probs(torch.cat(step_hidden, dim=1), opt_ids)  # [R, O]
    sums = (token_lp * real).sum(dim=1).tolist()
    counts = real.sum(dim=1).tolist()

    out, start = [], 0
    for opts in options:
        end = start + len(opts)
        out.append(OptionScores(sums[start:end], counts[start:end]))
        start = end
    return out
