"""RNG streams for dropout under tensor parallelism, and recomputation that replays them.

Two streams: the default torch generator, seeded identically on every tensor-parallel rank
(dropout on replicated activations must draw the same mask everywhere), and a tracked
"tensor-parallel" stream seeded per tensor-parallel rank (dropout on sharded activations:
attention heads, or sequence chunks under sequence parallelism, must draw different masks).
`fork()` runs a block on the tracked stream and puts the default one back afterwards.

`checkpoint(fn, *args)` recomputes `fn` in the backward pass with both streams restored to
what they were in the forward pass, so the dropout masks of the recomputation match.
"""

from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint

TP_STREAM = "tensor-parallel"
_TP_SEED_OFFSET = 2718  # keeps the per-rank streams away from the shared seed
_PP_SEED_OFFSET = 100


def _device_rng():
    """(get, set) for the generator dropout uses: CUDA when available, else CPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_rng_state, torch.cuda.set_rng_state
    return torch.get_rng_state, torch.set_rng_state


class RNGTracker:
    def __init__(self):
        self.states: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.states = {}

    def add(self, name: str, seed: int) -> None:
        get, set_ = _device_rng()
        saved = get()
        if torch.cuda.is_available():
            torch.cuda.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        self.states[name] = get()
        set_(saved)

    def get_states(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.states.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states = {k: v.clone() for k, v in states.items()}

    @contextlib.contextmanager
    def fork(self, name: str = TP_STREAM):
        if name not in self.states:  # no tracked stream (single rank): use the default one
            yield
            return
        get, set_ = _device_rng()
        saved = get()
        set_(self.states[name])
        try:
            yield
        finally:
            self.states[name] = get()
            set_(saved)


_TRACKER = RNGTracker()


def get_rng_tracker() -> RNGTracker:
    return _TRACKER


def model_parallel_seed(seed: int, tp_rank: int = 0, pp_rank: int = 0, tp: int = 1) -> None:
    """Seed the default stream per pipeline stage (the same on every tensor-parallel rank of
    the stage; Megatron's offset of 100 per stage, so stage k's masks are not stage 0's) and,
    with tp > 1, this rank's tensor-parallel stream."""
    stage_seed = seed + _PP_SEED_OFFSET * pp_rank
    torch.manual_seed(stage_seed)  # every device's generator
    _TRACKER.reset()
    if tp > 1:
        _TRACKER.add(TP_STREAM, stage_seed + _TP_SEED_OFFSET + tp_rank)


def checkpoint(fn, *args, **kwargs):
    """Activation recomputation that also restores the tracked streams (the default stream is
    restored by torch's own preserve_rng_state)."""
    saved: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def forward_context():
        saved.update(_TRACKER.get_states())
        yield

    @contextlib.contextmanager
    def recompute_context():
        current = _TRACKER.get_states()
        _TRACKER.set_states(saved)
        try:
            yield
        finally:
            _TRACKER.set_states(current)

    return torch.utils.checkpoint.checkpoint(
        fn, *args, use_reentrant=False, preserve_rng_state=True,
        context_fn=lambda: (forward_context(), recompute_context()), **kwargs)
