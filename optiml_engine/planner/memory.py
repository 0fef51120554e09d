"""Every buffer one rank holds, by phase of a step, for each way of sharding the state.

Ψ below is the rank's parameters (planner/params.py), w the bytes of the compute dtype, D the
data-parallel size; `padded` is Ψ rounded up to a multiple of the shards (optim/zero1.py).

Held all the time (from the first step on):

    weights          Ψ w                        zero3: Ψ w / D
    gradients        Ψ w, in the parameters' dtype (kept from backward until the next step)
                                                zero3: Ψ w / D
    fp32 master      4 padded / S               S = D with zero1 or zero3, else 1 (the flat
    Adam moments     8 padded / S               optimizer keeps an fp32 master even in fp32)

On top of that, one phase at a time (the peak is the largest):

    forward/backward   the activations (planner/activations.py); zero3 adds the gathered
                       weights and the unsharded gradients of the largest layer (or of the
                       embedding shard where the stage holds it)
    gradient sync      no sharding, D > 1: the all-reduce buckets hold a flat copy of every
                       gradient until they are written back (distributed/data_parallel.py)
    optimizer step     TODAY (optim/zero1.py `_grad_shard`): every gradient flattened into a
                       full-size fp32 buffer (4 padded), with zero1 plus its reduce-scattered
                       shard; then zero1 all-gathers the updated weights (w padded + w / D)
                       zero3 (planned): per-bucket reduce-scatter, no full-size temporary
    checkpoint save    TODAY (Engine.tensors, FlatAdamW.param_states): zero1 all-gathers
                       master and moments (12 padded) and the save clones moments (8 Ψ) and,
                       unless fp32, the master (4 Ψ); without sharding the clones only
                       zero3 (planned): written from the local shards, no temporary

The TODAY rows are the engine as it is; when ZeRO-1 stops building full-size temporaries
(issue 16, item 2) they change here, in `TODAY_ZERO1_TEMPORARIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHARD_MODES = ("none", "zero1", "zero3")
# False once optim/zero1.py reduce-scatters from persistent buckets and saves from shards.
TODAY_ZERO1_TEMPORARIES = True


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
    padded = per_shard * shards
    sharded_model = shard == "zero3" and dp > 1
    local = per_shard if sharded_model else params
    out = RankMemory(held={
        "weights": local * w,
        "gradients": local * w,
        "fp32 master": 4 * per_shard,
        "Adam moments": 8 * per_shard,
    })
    fwd = {"activations": activations}
    if sharded_model:
        fwd["gathered layer (weights + gradients)"] = 2 * gathered_unit * w
    out.phases["forward/backward"] = fwd
    if shard == "none" and dp > 1:
        out.phases["gradient sync"] = {"all-reduce buckets": params * w}
    if shard == "zero3" or (shard == "zero1" and not TODAY_ZERO1_TEMPORARIES):
        out.phases["optimizer step"] = {}
        out.phases["checkpoint save"] = {}
        return out
    if shards == 1:
        out.phases["optimizer step"] = {"flat fp32 gradients": 4 * padded}
        out.phases["checkpoint save"] = {"cloned moments and master":
                                         (8 if fp32_model else 12) * params}
        return out
    out.phases["optimizer step"] = {
        "flat fp32 gradients + shard": max(4 * padded + 4 * per_shard,
                                           w * padded + w * per_shard)}
    out.phases["checkpoint save"] = {
        "gathered master and moments": 12 * padded,
        "cloned moments and master": (8 if fp32_model else 12) * params}
    return out
