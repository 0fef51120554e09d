"""Greedy decoding with a KV cache, batched over left-padded prompts.

Each step feeds one token per unfinished row; keys and values go to preallocated buffers. A row
stops at `</s>` (id 2) or after `max_new_tokens`; finished rows are dropped from the batch and the
cache, so the cost follows the rows still decoding.
"""

from __future__ import annotations

import functools

import torch

from optiml_engine.eval.batching import REAL_DOC, greedy_tokens, left_pad
from optiml_engine.model.kv_cache import KVCache


@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int = 256,
                    eos_id: int = 2, pad_id: int = 1,
                    vocab_limit: int | None = None) -> list[list[int]]:
    """New token ids per prompt, without the final `</s>`. `vocab_limit` restricts the argmax to
    ids the tokenizer can decode (OPT pads its embedding table past the tokenizer's vocabulary)."""
    device = next(model.parameters()).device
    # A pipeline-parallel model (eval/pipeline_eval.py) picks on its last stage and broadcasts.
    pick = getattr(model, "greedy_tokens", None) or functools.partial(greedy_tokens, model)
    ids, position_ids, doc_ids, lengths = left_pad(prompts, pad_id, device)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None:
        # Positions past the learned table do not exist: stop there rather than fail.
        max_new_tokens = min(max_new_tokens, max_positions - int(lengths.max()) + 1)
    outputs: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0:
        return outputs
    cache = KVCache(ids.shape[1] + max_new_tokens)
    hidden = model.hidden_states(ids, position_ids, doc_ids, kv_cache=cache)[:, -1]
    rows = torch.arange(len(prompts), device=device)  # original index of each live row
    positions = lengths.clone()
    for step in range(max_new_tokens):
        tokens = pick(hidden, vocab_limit)
        finished = tokens == eos_id
        for row, tok, done in zip(rows.tolist(), tokens.tolist(), finished.tolist(), strict=True):
            if not done:
                outputs[row].append(tok)
        if step == max_new_tokens - 1:
            break
        if bool(finished.any()):
            keep = (~finished).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            cache.select(keep)
            rows, tokens, positions = rows[keep], tokens[keep], positions[keep]
        step_docs = torch.full_like(tokens[:, None], REAL_DOC)
        hidden = model.hidden_states(tokens[:, None], positions[:, None], step_docs,
                                     kv_cache=cache)[:, -1]
        positions = positions + 1
    return outputs
