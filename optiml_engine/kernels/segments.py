"""Packed-row bookkeeping shared by the attention backends.

A packed row holds several examples; `doc_ids` [B, S] gives each token its example's id. Every id
forms one contiguous run in its row (the packer writes them that way; padding is one more run at the
end). Under that contract "same document" means "same run", so the kernels only need, per token,
where its run starts and ends, and can skip whole tiles from those bounds alone.
"""

from __future__ import annotations

import torch


def segment_bounds(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the first and the last (inclusive) index of its run; both int32 [B, S].

    Computed with cumulative max/min only, so it needs no host synchronisation on a GPU.
    """
    b, s = doc_ids.shape
    pos = torch.arange(s, device=doc_ids.device).expand(b, s)
    changes = doc_ids[:, 1:] != doc_ids[:, :-1]
    starts_here = torch.cat([torch.ones_like(changes[:, :1]), changes], dim=1)
    ends_here = torch.cat([changes, torch.ones_like(changes[:, :1])], dim=1)
    start = torch.where(starts_here, pos, 0).cummax(dim=1).values
    end_from_right = torch.where(ends_here, pos, s - 1).flip(1).cummin(dim=1).values
    return start.to(torch.int32).contiguous(), end_from_right.flip(1).to(torch.int32).contiguous()


def cu_seqlens_to_doc_ids(cu_seqlens: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
    """Cumulative lengths [n+1] of examples packed into one row -> doc ids [1, S].

    Tokens past the last boundary (padding up to `seq_len`) get an id of their own.
    """
    total = int(cu_seqlens[-1]) if seq_len is None else seq_len
    pos = torch.arange(total, device=cu_seqlens.device)
    return torch.bucketize(pos, cu_seqlens[1:].to(pos.dtype), right=True)[None]


def doc_ids_to_cu_seqlens(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Doc ids [B, S] -> (cu_seqlens int32 over the flattened B*S tokens, longest run).

    Runs never span two rows, since every row boundary is also a run boundary.
    """
    b, s = doc_ids.shape
    changes = doc_ids[:, 1:] != doc_ids[:, :-1]
    starts = torch.cat([torch.ones_like(changes[:, :1]), changes], dim=1).flatten()
    begin = torch.nonzero(starts).flatten()
    cu = torch.cat([begin, begin.new_tensor([b * s])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())
