"""Left-padded prompt batches for decoding with a KV cache.

Prompts end at the same column, so the next token of every row is predicted from the last one.
Padding gets document id 0 and real tokens id 1: a real token never attends to padding, and a pad
token attends only to earlier pads, so no row of the attention mask is empty. Position ids count
from each row's first real token (pads sit at position 0), as the model saw them in training.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

PAD_DOC, REAL_DOC = 0, 1


def left_pad(prompts: list[list[int]], pad_id: int, device=None):
    """-> input_ids, position_ids, doc_ids [B, max_len] and the prompt lengths [B]."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (start it with </s>)")
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lengths.max())
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
    columns = torch.arange(width, device=device)[None, :]
    pads = (width - lengths)[:, None]
    position_ids = (columns - pads).clamp(min=0)
    doc_ids = torch.where(columns >= pads, REAL_DOC, PAD_DOC)
    return ids, position_ids, doc_ids, lengths


def right_pad(seqs: list[list[int]], pad_id: int, device=None):
    """-> ids [N, max_len] and a boolean mask of the real tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=device)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long, device=device)
    lengths = torch.tensor([len(s) for s in seqs], device=device)
    mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
    return ids, mask


def output_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final hidden states through the tied output embedding (under tensor
    parallelism: this rank's vocabulary slice only)."""
    return F.linear(hidden, model.output_weight)


def _vocab_shard(model):
    """(group, first id of this rank's slice) when the output layer is vocab-parallel, else None.
    Tensor-parallel logits are never gathered: only per-token maxima and sums cross ranks."""
    emb = model.decoder.embed_tokens
    group = getattr(emb, "group", None)
    if not hasattr(emb, "vocab_start") or not dist.is_initialized() or \
            dist.get_world_size(group) == 1:
        return None
    return group, emb.vocab_start


def _gather(x: torch.Tensor, group) -> torch.Tensor:
    """[size, *x.shape]: x from every rank of the group, in rank order."""
    size = dist.get_world_size(group)
    out = x.new_empty((size * x.numel(),))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, x.reshape(-1).contiguous(), group=group)
    return out.view(size, *x.shape)


def greedy_tokens(model, hidden: torch.Tensor, vocab_limit: int | None = None) -> torch.Tensor:
    """argmax over the vocabulary (ids below `vocab_limit`) of the logits of `hidden` [..., E]."""
    logits = output_logits(model, hidden)
    shard = _vocab_shard(model)
    if shard is None:
        return logits[..., :vocab_limit].argmax(dim=-1)
    group, start = shard
    if vocab_limit is not None:
        ids = start + torch.arange(logits.shape[-1], device=logits.device)
        logits = logits.masked_fill(ids >= vocab_limit, float("-inf"))
    best, where = logits.float().max(dim=-1)
    maxima, index = _gather(best, group), _gather(where + start, group)
    # The first rank holding the maximum has the lowest id, as argmax's first-occurrence rule.
    winner = maxima.argmax(dim=0, keepdim=True)
    return index.gather(0, winner)[0]


def token_log_probs(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) [...] under the logits of `hidden` [..., E], in fp32."""
    logits = output_logits(model, hidden).float()
    shard = _vocab_shard(model)
    if shard is None:
        return logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
    group, start = shard
    lse = torch.logsumexp(_gather(torch.logsumexp(logits, dim=-1), group), dim=0)
    local = targets - start
    mine = (local >= 0) & (local < logits.shape[-1])
    picked = logits.gather(-1, local.clamp(0, logits.shape[-1] - 1)[..., None])[..., 0]
    picked = torch.where(mine, picked, torch.zeros_like(picked))
    dist.all_reduce(picked, group=group)
    return picked - lse
