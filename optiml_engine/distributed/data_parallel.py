"""Bucketed gradient all-reduce over the data-parallel group, overlapped with backward.

Parameters are grouped into buckets of about `bucket_mb` in reverse order of registration
(roughly the order backward produces their gradients). A hook fires when a parameter's gradient
is fully accumulated; once every parameter of a bucket is ready (and every earlier bucket has
been launched, so all ranks issue collectives in the same order) the bucket is flattened and an
asynchronous all-reduce starts while backward continues. `finish()` launches what remains, waits
and writes the summed gradients back.

Only the backward of the last micro-batch of a step should synchronise: set `sync = True`
right before it (gradient accumulation on the earlier ones stays local). Gradients are SUMMED,
not averaged: the loss is already divided by the target tokens of the whole global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from optiml_engine.distributed.mappings import group_size


class GradBucketer:
    def __init__(self, params, group, bucket_mb: float = 25.0):
        self.group = group
        self.params = [p for p in params if p.requires_grad]
        self.sync = False
        self.buckets: list[list[torch.nn.Parameter]] = []
        limit = max(1, int(bucket_mb * 2**20))
        current, size = [], 0
        for p in reversed(self.params):
            current.append(p)
            size += p.numel() * p.element_size()
            if size >= limit:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        self.bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        self._hooks = []
        if group_size(group) > 1:
            self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad)
                           for p in self.params]
        self._reset()

    def _reset(self) -> None:
        self.ready = [0] * len(self.buckets)
        self.next_launch = 0
        self.pending: list[tuple[int, torch.Tensor, object]] = []

    def _on_grad(self, param) -> None:
        if not self.sync:
            return
        self.ready[self.bucket_of[id(param)]] += 1
        while self.next_launch < len(self.buckets) and \
                self.ready[self.next_launch] == len(self.buckets[self.next_launch]):
            self._launch(self.next_launch)

    def _launch(self, b: int) -> None:
        flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else
                          torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                          for p in self.buckets[b]])
        work = dist.all_reduce(flat, group=self.group, async_op=True)
        self.pending.append((b, flat, work))
        self.next_launch = b + 1

    @torch.no_grad()
    def finish(self) -> None:
        """Complete the all-reduce of every bucket (launching the ones not yet started)."""
        if group_size(self.group) == 1:
            return
        while self.next_launch < len(self.buckets):
            self._launch(self.next_launch)
        for b, flat, work in self.pending:
            work.wait()
            offset = 0
            for p in self.buckets[b]:
                n = p.numel()
                summed = flat[offset:offset + n].view_as(p)
                if p.grad is None:
                    p.grad = summed.clone()
                else:
                    p.grad.copy_(summed)
                offset += n
        self._reset()
        self.sync = False

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
