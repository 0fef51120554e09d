"""Measure what autograd keeps for backward on one rank of a layout, in this process.

A fake process group (torch.distributed's "fake" backend: collectives do nothing, shapes are
right) of the layout's world size stands in for the other ranks, so one rank's part of the
engine is built and run exactly as under torchrun. Saved tensors are seen through
`torch.autograd.graph.saved_tensors_hooks`, each storage counted once and parameters not at all;
under full recomputation the checkpointed layers save nothing through the hooks, so the inputs
the checkpoint keeps are read where the engine hands them to it (`Engine.run_layer`).

Attention runs through a stand-in that saves what the Triton flash kernel saves
(kernels/triton_attention.py: q, k, v, out, lse), the GPU path the planner models; the CPU's
SDPA would also keep a boolean mask.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

from optiml_engine.config import ModelConfig, OptimConfig, ParallelConfig, PrecisionConfig
from optiml_engine.distributed import state
from optiml_engine.kernels.attention import sdpa_attention
from optiml_engine.model.meta_init import meta_model
from optiml_engine.training.engine import Engine


class FlashLike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, doc_ids, scale):
        b, s, h, _ = q.shape
        out = sdpa_attention(q, k, v, doc_ids, None, 0.0, scale).contiguous()
        lse = torch.zeros(b * h, s, dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None


def flash_like(q, k, v, doc_ids=None, kv_doc_ids=None, dropout_p=0.0, scale=None):
    return FlashLike.apply(q, k, v, doc_ids, scale)


@contextlib.contextmanager
def fake_rank(rank: int, world: int, tp: int, pp: int):
    """This process as rank `rank` of a fake group of `world`, the engine's grid built on it."""
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        state.initialize(tp, pp)
        yield state.grid()
    finally:
        state.destroy()


class SavedBytes:
    """Counts the bytes of distinct storages saved for backward, and their peak while alive."""

    def __init__(self, params):
        self.params = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict[int, int] = {}  # every storage ever saved
        self.alive: dict[int, list] = {}  # ptr -> [bytes, holders]
        self.live = self.peak = 0

    def add(self, t: torch.Tensor) -> None:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.params:
            self.seen.setdefault(ptr, t.untyped_storage().nbytes())

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def pack(self, t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr in self.params:
            return t
        self.add(t)
        holder = _Held(t)
        entry = self.alive.setdefault(ptr, [t.untyped_storage().nbytes(), 0])
        if entry[1] == 0:
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(holder, self._release, ptr)
        return holder

    def _release(self, ptr: int) -> None:
        entry = self.alive[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.alive[ptr]

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda held: held.t
                                                        if isinstance(held, _Held) else held)


class _Held:
    def __init__(self, t):
        self.t = t


def tiny(dropout: float = 0.1) -> ModelConfig:
    return ModelConfig(vocab_size=64, hidden_size=64, num_layers=8, num_heads=8,
                       ffn_hidden_size=128, max_position_embeddings=64, dropout=dropout)


def batch(b: int, s: int, vocab: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    half = s // 2
    doc = torch.cat([torch.zeros(b, half, dtype=torch.long),
                     torch.ones(b, s - half, dtype=torch.long)], 1)
    pos = torch.cat([torch.arange(half), torch.arange(s - half)]).expand(b, s).contiguous()
    return {"tokens": torch.randint(3, vocab, (b, s), generator=g),
            "labels": torch.randint(3, vocab, (b, s), generator=g),
            "loss_mask": torch.ones(b, s), "position_ids": pos, "doc_ids": doc}


def build_engine(cfg, tp, pp, sp, recompute, dtype, virtual=1, chunk_tokens=4096):
    parallel = ParallelConfig(tp=tp, pp=pp, sp=sp, recompute=recompute, virtual_stages=virtual)
    return Engine(meta_model(cfg, 1), parallel, OptimConfig(), PrecisionConfig(dtype=dtype),
                  loss_chunk_tokens=chunk_tokens)


def stage_forward_bytes(monkeypatch, cfg, tp, pp, sp, recompute, rank, dtype="bf16", b=2,
                        s=16) -> int:
    """Saved bytes of one micro-batch's forward on global rank `rank` of tp x pp (dp = 1)."""
    import optiml_engine.model.opt as opt

    monkeypatch.setattr(opt, "attention", flash_like)
    with fake_rank(rank, tp * pp, tp, pp):
        eng = build_engine(cfg, tp, pp, sp, recompute, dtype)
        counter = SavedBytes(eng.model.parameters())
        if eng.run_layer is not None:
            inner = eng.run_layer

            def run_layer(layer, h, *args):
                counter.add(h)  # what the checkpoint keeps of this layer
                return inner(layer, h, *args)

            eng.run_layer = run_layer
        data = batch(b, s)
        x = None if eng.first else torch.randn(eng.activation_shape(data), dtype=eng.dtype,
                                               requires_grad=True)
        with counter.hooks():
            eng.stage_forward(data, x)
        return counter.total


def step_peak_bytes(monkeypatch, cfg, tp, pp, virtual, rank, micro: int, dtype="bf16", b=1,
                    s=16) -> int:
    """Peak of the saved bytes alive during a whole train_step's pipeline schedule on
    `rank` (the other stages' activations and gradients are the fake group's garbage)."""
    import optiml_engine.model.opt as opt

    monkeypatch.setattr(opt, "attention", flash_like)
    with fake_rank(rank, tp * pp, tp, pp):
        eng = build_engine(cfg, tp, pp, False, "none", dtype, virtual)
        counter = SavedBytes(eng.model.parameters())
        with counter.hooks():
            eng.train_step([batch(b, s) for _ in range(micro)], lr=0.0, max_norm=0.0)
        return counter.peak
