"""Persistent flat parameter and gradient buffers over the data-parallel group, reduced bucket by
bucket while backward runs. `parallel.shard` picks what each rank keeps:

  none   every rank holds every parameter and gradient; buckets are all-reduced in place;
  zero1  parameters and gradients whole, but each rank owns 1/dp of every bucket: buckets are
         reduce-scattered into that slice (the optimizer state exists only there), and the
         updated slices all-gathered back into the parameter buffer;
  zero3  as zero1 for the embeddings and head; each decoder layer is one bucket whose
         parameters exist only as this rank's slice, all-gathered before the layer's forward and
         again before its backward, freed after each; its gradients are reduce-scattered as soon
         as the layer's backward has produced them (every micro-batch) and summed into the slice.

Each bucket is padded to a multiple of the shards. A rank's *local space* is its slices of every
bucket end to end (with no sharding: the whole buffer); the optimizer's fp32 masters and moments
live in it. Parameters of replicated buckets are views of one parameter buffer and their `.grad`
views of one gradient buffer, so autograd accumulates micro-batches in place and no full-size
gradient copy is ever made (Megatron-LM's distributed optimizer buffers; PyTorch DDP's
gradient_as_bucket_view).

Only the backward of the last micro-batch synchronises the replicated buckets: set `sync = True`
right before it. A post-accumulate hook counts each bucket's ready gradients; when a bucket is
complete and every bucket before it in launch order has been launched (so every rank issues the
same collectives in the same order), its asynchronous reduction starts. Buckets launch in reverse
buffer order (backward produces the last parameters first); `late` parameters (the pipeline's
tied embedding, whose gradient needs the embedding group's sum first) get their own bucket that
only `finish()` launches. Gradients are SUMMED, not averaged: the loss is already divided by the
target tokens of the whole global batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from optiml_engine.distributed.mappings import (
    all_gather_into_tensor,
    group_rank,
    group_size,
    reduce_scatter_tensor,
)

SHARD_MODES = ("none", "zero1", "zero3")


@dataclass(eq=False)
class Bucket:
    params: list
    offsets: list[int]  # each parameter's first element inside the bucket
    size: int  # elements, padded to a multiple of the shards
    shard: int  # size // shards; this rank owns [rank * shard, (rank + 1) * shard)
    local: int = 0  # where that slice starts in the local space
    start: int = 0  # replicated buckets: where the bucket starts in the buffers
    sharded: bool = False  # zero3: only the slice exists between uses
    late: bool = False
    ready: int = 0
    full: torch.Tensor | None = None  # zero3: the whole parameters, storage empty between uses
    gathered: bool = False
    grad_flat: torch.Tensor | None = None  # zero3: this micro-batch's gradients, until reduced
    shapes: list = field(default_factory=list)


class FlatBuffers:
    def __init__(self, params, group=None, mode: str = "none", bucket_mb: float = 25.0,
                 late=(), units=()):
        """Lay `params` out in buckets (no memory yet: `materialize` moves them in, after the
        optimizer has read their fp32 values). units: zero3's parameter groups (one per decoder
        layer), one sharded bucket each; late: parameters reduced only by `finish()`."""
        if mode not in SHARD_MODES:
            raise ValueError(f"shard mode {mode!r}, expected one of {SHARD_MODES}")
        self.params = list(params)
        self.group, self.dp = group, group_size(group)
        self.sharding = mode != "none" and self.dp > 1
        self.shards = self.dp if self.sharding else 1
        self.rank = group_rank(group) if self.sharding else 0
        self.sync = False
        self.pinned = False  # inside gathered(): zero3 parameters stay whole
        # gloo's reduce_scatter_tensor copies its input 2.7 times over (measured, torch 2.13):
        # with every bucket in flight, a full-size temporary. On gloo a bucket is summed in
        # place by all-reduce and the rank keeps its slice (twice the bytes on the wire, no
        # copy); NCCL reduce-scatters.
        self.in_place_sum = self.sharding and dist.get_backend(group) == "gloo"
        late_ids = {id(p) for p in late}
        units = [list(u) for u in units] if mode == "zero3" and self.sharding else []
        unit_ids = {id(p) for u in units for p in u}
        rest = [p for p in self.params if id(p) not in late_ids | unit_ids]
        limit = max(1, int(bucket_mb * 2**20 / 4))  # elements (of fp32, the buffer's widest)
        groups, current = [], []
        for p in rest:
            current.append(p)
            if sum(q.numel() for q in current) >= limit:
                groups.append(current)
                current = []
        groups += [current] if current else []
        self.buckets = [self._bucket(g) for g in groups]
        lates = [p for p in self.params if id(p) in late_ids]
        if lates:
            self.buckets.append(self._bucket(lates, late=True))
        self.buckets += [self._bucket(u, sharded=True) for u in units]
        local = start = 0
        for b in self.buckets:
            b.local, local = local, local + b.shard
            if not b.sharded:
                b.start, start = start, start + b.size
        self.local_size, self.buffer_size = local, start
        self.bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self.slot = {id(p): (b, k) for b in self.buckets for k, p in enumerate(b.params)}
        self.order = [b for b in reversed(self.buckets) if not (b.late or b.sharded)]
        self.order += [b for b in self.buckets if b.late]
        self._hooks: list = []
        self.pending: list = []
        self.next_launch = 0

    def _bucket(self, params, late=False, sharded=False) -> Bucket:
        offsets, n = [], 0
        for p in params:
            offsets.append(n)
            n += p.numel()
        size = -(-n // self.shards) * self.shards
        return Bucket(list(params), offsets, size, size // self.shards, late=late,
                      sharded=sharded, shapes=[p.shape for p in params])

    # -- where each parameter's elements are -------------------------------------------------

    def pieces(self) -> list[tuple[int, int, int, int]]:
        """(i, lo, hi, at): elements [lo, hi) of params[i] (flattened) are this rank's, at local
        position `at`. Padding is in no piece."""
        index = {id(p): i for i, p in enumerate(self.params)}
        out = []
        for b in self.buckets:
            own = self.rank * b.shard
            for p, o, shape in zip(b.params, b.offsets, b.shapes, strict=True):
                lo, hi = max(o, own), min(o + shape.numel(), own + b.shard)
                if lo < hi:
                    out.append((index[id(p)], lo - o, hi - o, b.local + lo - own))
        return out

    def shard_runs(self, b: Bucket, k: int, local: torch.Tensor) -> list:
        """(lo, hi, view): elements [lo, hi) of bucket b's k-th parameter that this rank owns,
        and the view of `local` (a local-space tensor) holding them."""
        own, o, n = self.rank * b.shard, b.offsets[k], b.shapes[k].numel()
        lo, hi = max(o, own), min(o + n, own + b.shard)
        if lo >= hi:
            return []
        at = b.local + lo - own
        return [(lo - o, hi - o, local[at:at + hi - lo])]

    def local_values(self, tensors, dtype=torch.float32) -> torch.Tensor:
        """This rank's slices of per-parameter tensors (shaped like params), in the local space."""
        device = self.params[0].device if self.params else torch.device("cpu")
        out = torch.zeros(self.local_size, dtype=dtype, device=device)
        for i, lo, hi, at in self.pieces():
            if tensors[i] is not None:
                out[at:at + hi - lo].copy_(tensors[i].detach().reshape(-1)[lo:hi])
        return out

    # -- memory --------------------------------------------------------------------------------

    def materialize(self, dtype) -> None:
        """Move the parameters into the buffers in `dtype` (zero3 buckets: only this rank's
        slice), make every replicated `.grad` a view of the gradient buffer, install hooks."""
        device = self.params[0].device if self.params else torch.device("cpu")
        self.dtype = dtype
        self.param_buf = torch.zeros(self.buffer_size, dtype=dtype, device=device)
        self.grad_buf = torch.zeros(self.buffer_size, dtype=dtype, device=device)
        # The reduced gradients, in the local space: the buffer itself when nothing is sharded.
        self.grad_local = self.grad_buf if not self.sharding else torch.zeros(
            self.local_size, dtype=dtype, device=device)
        sharded = [b for b in self.buckets if b.sharded]
        self.shard_params = self.local_values(
            [p if b.sharded else None for p, b in ((p, self.bucket_of[id(p)])
                                                  for p in self.params)], dtype) \
            if sharded else None
        with torch.no_grad():
            for b in self.buckets:
                for k, p in enumerate(b.params):
                    if b.sharded:  # views of the whole bucket, emptied once all are made
                        if b.full is None:
                            b.full = torch.empty(b.size, dtype=dtype, device=device)
                            b.gathered = True
                        p.data = self._view(b.full, b, k, start=0)
                        p.zero3_shard = (self, b, k)  # read by distributed/checkpoint.py
                    else:
                        view = self._view(self.param_buf, b, k)
                        view.copy_(p.detach())
                        p.data = view
        for b in self.buckets:
            if b.sharded:
                self.release(b)
        self.zero_grad()
        if self.dp > 1:
            self._hooks = [p.register_post_accumulate_grad_hook(
                self._on_unit_grad if self.bucket_of[id(p)].sharded else self._on_grad)
                for p in self.params]

    def _view(self, buf: torch.Tensor, b: Bucket, k: int, start=None) -> torch.Tensor:
        o, shape = (b.start if start is None else start) + b.offsets[k], b.shapes[k]
        return buf[o:o + shape.numel()].view(shape)

    def local_slice(self, t: torch.Tensor, b: Bucket) -> torch.Tensor:
        return t[b.local:b.local + b.shard]

    def zero_grad(self) -> None:
        self.reduced = False
        self.grad_buf.zero_()
        if self.grad_local is not self.grad_buf:
            self.grad_local.zero_()
        for b in self.buckets:
            for k, p in enumerate(b.params):
                p.grad = None if b.sharded else self._view(self.grad_buf, b, k)
            b.ready, b.grad_flat = 0, None

    # -- zero3: gather for use, free after ----------------------------------------------------

    def gather(self, b: Bucket) -> None:
        """Refill a zero3 bucket's parameters from every rank's slice."""
        if b.gathered:
            return
        b.full.untyped_storage().resize_(b.size * b.full.element_size())
        all_gather_into_tensor(b.full, self.local_slice(self.shard_params, b), group=self.group)
        b.gathered = True

    def release(self, b: Bucket) -> None:
        """Free a zero3 bucket's parameters. Their views (and what autograd saved of them)
        keep their shapes and point at an empty storage until the next gather refills it in
        place (FSDP's resize-to-zero), so a saved `weight.t()` sees the values again."""
        if b.gathered and not self.pinned:
            b.full.untyped_storage().resize_(0)
            b.gathered = False

    @contextlib.contextmanager
    def gathered(self):
        """Every zero3 parameter whole for the duration, and the per-layer gathers off (FSDP's
        summon_full_params): every data-parallel rank enters it, then any subset of them may
        run forwards (the trainer's evaluation runs on replica 0 only)."""
        sharded = [b for b in self.buckets if b.sharded]
        for b in sharded:
            self.gather(b)
        self.pinned = True
        try:
            yield
        finally:
            self.pinned = False
            for b in sharded:
                self.release(b)

    def hook_module(self, module, params) -> None:
        """Gather `params`' zero3 bucket before module's forward and before its backward; free
        it after the forward (the backward frees it once its gradients are reduced)."""
        b = self.bucket_of[id(next(iter(params)))]
        if not b.sharded:
            return

        def regather(grad):
            self.gather(b)
            self._grad_views(b)
            return grad

        def after(_module, _inputs, out):
            h = out[0] if isinstance(out, tuple) else out
            if isinstance(h, torch.Tensor) and h.requires_grad:
                h.register_hook(regather)
            self.release(b)

        self._hooks += [module.register_forward_pre_hook(lambda *_: self.gather(b)),
                        module.register_forward_hook(after)]

    def _grad_views(self, b: Bucket) -> None:
        """Before a zero3 bucket's backward: its `.grad`s as views of one zeroed flat tensor,
        so autograd accumulates into what is then reduced (no copy)."""
        if b.grad_flat is None:
            b.grad_flat = torch.zeros(b.size, dtype=self.dtype, device=self.grad_local.device)
            for k, p in enumerate(b.params):
                p.grad = self._view(b.grad_flat, b, k, start=0)

    def _on_unit_grad(self, param) -> None:
        b = self.bucket_of[id(param)]
        b.ready += 1
        if b.ready == len(b.params):
            self._reduce_unit(b)

    @torch.no_grad()
    def _reduce_unit(self, b: Bucket) -> None:
        """Sum this micro-batch's gradients of a zero3 bucket into this rank's slice."""
        flat, b.grad_flat = b.grad_flat, None
        if flat is None:  # its backward ran without the pre-backward hook
            flat = torch.zeros(b.size, dtype=self.dtype, device=self.grad_local.device)
        for k, p in enumerate(b.params):
            view = self._view(flat, b, k, start=0)
            if p.grad is not None and p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)  # not the view (someone replaced it)
            p.grad = None
        if self.in_place_sum:
            dist.all_reduce(flat, group=self.group)
            part = flat[self.rank * b.shard:(self.rank + 1) * b.shard]
        else:
            part = torch.empty(b.shard, dtype=self.dtype, device=flat.device)
            reduce_scatter_tensor(part, flat, group=self.group)
        self.local_slice(self.grad_local, b).add_(part)
        b.ready = 0
        self.release(b)

    # -- replicated buckets: reduce once per step ----------------------------------------------

    def _adopt(self, b: Bucket, k: int) -> None:
        """A `.grad` that is not the buffer's view (someone set it to None or replaced it since
        zero_grad) is copied into the buffer, and the view put back."""
        p, view = b.params[k], self._view(self.grad_buf, b, k)
        if p.grad is not None and p.grad.data_ptr() != view.data_ptr():
            view.copy_(p.grad)
            p.grad = view
        elif p.grad is None:
            p.grad = view

    def _on_grad(self, param) -> None:
        b, k = self.slot[id(param)]
        self._adopt(b, k)
        if not self.sync:
            return
        b.ready += 1
        while self.next_launch < len(self.order):
            b = self.order[self.next_launch]
            if b.late or b.ready < len(b.params):
                break
            self._launch(b)

    def _launch(self, b: Bucket) -> None:
        grads = self.grad_buf[b.start:b.start + b.size]
        if self.sharding and not self.in_place_sum:
            work = reduce_scatter_tensor(self.local_slice(self.grad_local, b), grads,
                                         group=self.group, async_op=True)
            self.pending.append((work, None))
        else:
            work = dist.all_reduce(grads, group=self.group, async_op=True)
            self.pending.append((work, b if self.sharding else None))
        self.next_launch += 1

    def _keep_slice(self, b: Bucket) -> None:
        """After an in-place all-reduce standing in for a reduce-scatter: keep this rank's slice."""
        summed = self.grad_buf[b.start:b.start + b.size]
        self.local_slice(self.grad_local, b).copy_(
            summed[self.rank * b.shard:(self.rank + 1) * b.shard])

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """Complete every reduction (launching what has not started); returns the reduced
        gradients in the local space (the caller may change them in place). Once per step:
        a second call returns the same tensor."""
        if self.reduced:
            return self.grad_local
        self.reduced = True
        for b in self.buckets:
            if not b.sharded:
                for k in range(len(b.params)):
                    self._adopt(b, k)
        if self.dp > 1:
            for b in self.buckets:
                if b.sharded and b.ready:  # a parameter without a gradient this micro-batch
                    self._reduce_unit(b)
            while self.next_launch < len(self.order):
                self._launch(self.order[self.next_launch])
            for work, bucket in self.pending:
                work.wait()
                if bucket is not None:
                    self._keep_slice(bucket)
        self.pending, self.next_launch, self.sync = [], 0, False
        for b in self.buckets:
            b.ready = 0
        return self.grad_local

    # -- parameters from the updated slices ----------------------------------------------------

    @torch.no_grad()
    def write_params(self, master: torch.Tensor) -> None:
        """Parameters <- the fp32 slices in the local space, rounded to the parameters' dtype."""
        if not self.sharding:
            self.param_buf.copy_(master)
            return
        for b in self.buckets:
            mine = self.local_slice(master, b)
            if b.sharded:
                self.local_slice(self.shard_params, b).copy_(mine)
                self.release(b)  # gathered (a test between steps): refilled when next used
            else:  # the rounded slices give the same bits and move fewer bytes in bf16/fp16
                all_gather_into_tensor(self.param_buf[b.start:b.start + b.size],
                                       mine.to(self.dtype), group=self.group)

    def local_params(self) -> torch.Tensor:
        """This rank's slices of the parameters (their dtype), in the local space."""
        if not self.sharding:
            return self.param_buf
        out = torch.empty(self.local_size, dtype=self.dtype, device=self.param_buf.device)
        for b in self.buckets:
            src = self.local_slice(self.shard_params, b) if b.sharded else \
                self.param_buf[b.start:b.start + b.size][self.rank * b.shard:][:b.shard]
            self.local_slice(out, b).copy_(src)
        return out

    def gather_local(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter full tensors from every rank's local-space `t` (all-gathers: for tests
        and tools, never on the training or checkpoint path)."""
        if self.sharding:
            every = torch.empty(self.shards * self.local_size, dtype=t.dtype, device=t.device)
            all_gather_into_tensor(every, t.contiguous(), group=self.group)
            every = every.view(self.shards, self.local_size)
        out = {}
        for b in self.buckets:
            if self.sharding:
                full = every[:, b.local:b.local + b.shard].reshape(-1)
            else:
                full = t[b.local:b.local + b.size]
            for p, o, shape in zip(b.params, b.offsets, b.shapes, strict=True):
                out[id(p)] = full[o:o + shape.numel()].view(shape)
        return [out[id(p)] for p in self.params]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
