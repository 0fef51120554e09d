"""Every buffer one rank holds, by phase of a step, for each way of sharding the state.

Ψ below is the rank's parameters (planner/params.py), w the bytes of the compute dtype, D the
data-parallel size; `padded` is Ψ rounded up to a multiple of the shards (optim/zero1.py).

Held all the time (from the first step on):

    weights          Ψ w                        zero3: Ψ w / D
    gradients        Ψ w, in the parameters' dtype (kept from backward until the next step)
                                                zero3: Ψ w / D
    reduced slice    zero1: Ψ w / D (the reduced gradients of this rank's optimizer shard)
    fp32 master      4 padded / S               S = D with zero1 or zero3, else 1 (the flat
    Adam moments     8 padded / S               optimizer keeps an fp32 master even in fp32)

On top of that, one phase at a time (the peak is the largest):

    forward/backward   the activations (planner/activations.py); zero3 adds the gathered
                       weights and the unsharded gradients of the largest layer (or of the
                       embedding shard where the stage holds it)
    optimizer step     the reduced gradients (this rank's slice under zero1/zero3, all of them
                       without sharding) upcast to fp32 when the weights are not fp32
                       (optim/zero1.py `_grad_shard`)
    checkpoint save    nothing: ranks write their local slices through DCP as zero-copy
                       aliases (distributed/flat_chunks.py)

Gradients are reduced in place in their persistent buffers (distributed/data_parallel.py); under
zero1 the reduced slice is its own buffer (Ψ w / D). The ZeRO-1 of before this change built a
full-size fp32 flat gradient (4 Ψ) every step and all-gathered plus cloned master and moments
(+24 Ψ) for a save: docs/planner.md keeps those figures for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHARD_MODES = ("none", "zero1", "zero3")


@dataclass
class RankMemory:
    """Bytes per buffer that is always there, and per phase the bytes it adds."""

    held: dict[str, int] = field(default_factory=dict)
    phases: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def held_bytes(self) -> int:
        return sum(self.held.values())

    def phase_bytes(self, phase: str) -> int:
        return self.held_bytes + sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.phase_bytes(self.peak_phase)


def rank_memory(params: int, w: int, dp: int, shard: str, activations: int,
                gathered_unit: int, fp32_model: bool) -> RankMemory:
    """params: Ψ of this rank; activations: its activation peak (bytes); gathered_unit: the
    parameters of the largest block zero3 gathers (planner/params.largest_unit_params)."""
    if shard not in SHARD_MODES:
        raise ValueError(f"shard mode {shard!r}: not one of {SHARD_MODES}")
    shards = dp if shard != "none" else 1
    per_shard = -(-params // shards)  # FlatAdamW's shard_size
    sharded_model = shard == "zero3" and dp > 1
    local = per_shard if sharded_model else params
    held = {"weights": local * w, "gradients": local * w}
    if shard == "zero1" and dp > 1:
        held["reduced gradient slice"] = per_shard * w
    held.update({"fp32 master": 4 * per_shard, "Adam moments": 8 * per_shard})
    out = RankMemory(held=held)
    fwd = {"activations": activations}
    if sharded_model:
        fwd["gathered layer (weights + gradients)"] = 2 * gathered_unit * w
    out.phases["forward/backward"] = fwd
    out.phases["optimizer step"] = {} if w == 4 else {"fp32 gradients": 4 * per_shard}
    out.phases["checkpoint save"] = {}
    return out
