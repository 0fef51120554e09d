"""Mixed-precision AdamW over flat buffers, optionally sharded over data parallelism (ZeRO-1 /
ZeRO-3, `parallel.shard`; the buffers and their reductions: distributed/data_parallel.py).

Each rank keeps, for its local space only (its slice of every bucket; everything without
sharding), the fp32 master weights and both Adam moments. A step:

  1. finishes the gradients' reduction (all-reduce, or reduce-scatter into the local space),
     converting them to fp32 when the parameters are bf16/fp16 (a local-space temporary);
  2. unscales (fp16), skips the step if any rank saw inf/NaN, computes the global norm (each
     element counted once, see optim.clip) and clips;
  3. runs AdamW on the local space through `kernels.adamw_step` (the backend the recipe's
     `kernels.adamw` picks), one call per weight-decay group of per-parameter views;
  4. writes the updated slices into the parameters (all-gathered into the replicated buffer;
     zero3 buckets keep only their slice).

No full-size temporary is made: gradients are reduced from the persistent buffer, and
checkpoints are written from the local space (`state_runs`, distributed/flat_chunks.py).
Weight decay applies to parameters with 2 or more dimensions (OPT-IML: not biases/LayerNorm).
"""

from __future__ import annotations

import torch

from optiml_engine.distributed.data_parallel import FlatBuffers
from optiml_engine.kernels.adamw import adamw_step
from optiml_engine.optim.clip import clip_coefficient, global_norm
from optiml_engine.optim.loss_scaler import ConstantLossScaler, found_inf_anywhere

STATE_KEYS = ("master", "exp_avg", "exp_avg_sq")


class FlatAdamW:
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, shard_group=None, count_weights=None,
                 count_here: bool = True, world_group=None, shard: str = "zero1",
                 dtype=None, bucket_mb: float = 25.0, late=(), units=()):
        """`count_weights[i]` says whether params[i] counts in the global norm on this rank;
        `count_here=False` drops this rank's whole buffer from the norm (without ZeRO, the
        data-parallel replicas hold identical gradients and only the first one counts).
        `world_group`: every rank of the model (global norm, overflow check); None: one rank.
        shard_group: the data-parallel group (None: one rank); shard: "none" (all-reduce),
        "zero1" or "zero3" over it; dtype: the parameters' dtype from now on (default theirs);
        late, units: see FlatBuffers."""
        self.params = list(params)
        self.shapes = [p.shape for p in self.params]
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.group, self.world_group = shard_group, world_group
        self.buffers = FlatBuffers(self.params, shard_group, shard, bucket_mb, late, units)
        self.shards = self.buffers.shards
        # The fp32 masters from the parameters as given (fp32), before they are rounded.
        self.master = self.buffers.local_values([p.detach() for p in self.params])
        self.exp_avg = torch.zeros_like(self.master)
        self.exp_avg_sq = torch.zeros_like(self.master)
        dtype = dtype or (self.params[0].dtype if self.params else torch.float32)
        self.buffers.materialize(dtype)
        self.step_count = 0
        counts = count_weights if count_weights is not None else [True] * len(self.params)
        self.pieces = self.buffers.pieces()
        # The local ranges whose gradients count in the global norm on this rank.
        self.counted = [(at, at + hi - lo) for i, lo, hi, at in self.pieces
                        if counts[i] and count_here]
        self.groups = [(decays, [(at, at + hi - lo) for i, lo, hi, at in self.pieces
                                 if (len(self.shapes[i]) >= 2) == decays])
                       for decays in (True, False)]
        self.groups = [(decays, ranges) for decays, ranges in self.groups if ranges]

    def _local_squares(self, grad: torch.Tensor) -> torch.Tensor:
        """Sum of squares of the counted ranges: one norm per range, no slice-sized temporary."""
        if not self.counted:
            return torch.zeros((), dtype=torch.float32, device=grad.device)
        norms = torch._foreach_norm([grad[lo:hi] for lo, hi in self.counted])
        return torch.stack(norms).double().square().sum().float()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the persistent gradient buffers (replicated `.grad`s stay views of them)."""
        self.buffers.zero_grad()

    def _grad_shard(self) -> torch.Tensor:
        grad = self.buffers.finish()
        self.buffers.reduced = False  # the next backward's gradients are reduced afresh
        return grad if grad.dtype == torch.float32 else grad.float()

    # -- the step --------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, lr: float | None = None, max_norm: float = 0.0, scaler=None,
             skip: bool = False) -> dict[str, float]:
        """One update; returns {"grad_norm", "skipped", "loss_scale"} (norm before clipping).
        skip: the caller saw a non-finite loss (the same on every rank): count it, change
        nothing."""
        scaler = scaler or ConstantLossScaler()
        lr = self.lr if lr is None else lr
        if skip:
            scaler.update(True)
            return {"grad_norm": float("nan"), "skipped": 1.0, "loss_scale": scaler.scale}
        grad = self._grad_shard()
        if scaler.scale != 1.0:
            grad.div_(scaler.scale)
        if scaler.dynamic and scaler.update(found_inf_anywhere([grad], self.world_group)):
            return {"grad_norm": float("nan"), "skipped": 1.0, "loss_scale": scaler.scale}
        norm = global_norm(self._local_squares(grad), self.world_group)
        # Every rank holds the same global norm, so every rank skips together; a NaN never
        # reaches the weights (fp32 / bf16 divergence, or an fp16 overflow of the squares).
        finite = bool(torch.isfinite(norm))
        if (not finite or not scaler.dynamic) and scaler.update(not finite):
            return {"grad_norm": float(norm), "skipped": 1.0, "loss_scale": scaler.scale}
        if max_norm > 0:
            grad.mul_(clip_coefficient(norm, max_norm).to(grad.device))
        self._adamw(grad, lr)
        self.buffers.write_params(self.master)
        return {"grad_norm": float(norm), "skipped": 0.0, "loss_scale": scaler.scale}

    def _adamw(self, grad: torch.Tensor, lr: float) -> None:
        """The fp32 masters are the targets (masters=None); the caller already unscaled,
        clipped and checked the gradients on every rank, so the kernel checks nothing."""
        self.step_count += 1
        beta1, beta2 = self.betas
        for decays, ranges in self.groups:
            master, g, m, v = ([t[lo:hi] for lo, hi in ranges]
                               for t in (self.master, grad, self.exp_avg, self.exp_avg_sq))
            adamw_step(master, g, m, v, None, lr=lr, beta1=beta1, beta2=beta2, eps=self.eps,
                       weight_decay=self.weight_decay if decays else 0.0,
                       step=self.step_count, check_non_finite=False)

    # -- per-parameter state for checkpoints (layout independent) ----------------------------

    def state_runs(self, key: str, index: int) -> list:
        """params[index]'s elements of state `key` on this rank: (lo, hi, view) flat runs, views
        of the local space (no copy); distributed/checkpoint.py saves and loads them."""
        b, k = self.buffers.slot[id(self.params[index])]
        return self.buffers.shard_runs(b, k, getattr(self, key))

    @torch.no_grad()
    def masters_from_params(self) -> None:
        """master <- the parameters' values (a checkpoint without masters: fp32 weights)."""
        self.master.copy_(self.buffers.local_params())

    @torch.no_grad()
    def write_params(self) -> None:
        self.buffers.write_params(self.master)

    def param_states(self) -> list[dict[str, torch.Tensor]]:
        """For each parameter: fp32 master, exp_avg, exp_avg_sq shaped like it (all-gathers:
        for tests and tools; checkpoints are written from the local space)."""
        per_key = {k: self.buffers.gather_local(getattr(self, k)) for k in STATE_KEYS}
        return [{k: per_key[k][i] for k in STATE_KEYS} for i in range(len(self.params))]

    @torch.no_grad()
    def load_param_states(self, states: list[dict[str, torch.Tensor]], step: int) -> None:
        for key in STATE_KEYS:
            getattr(self, key).copy_(self.buffers.local_values([s[key] for s in states]))
        self.step_count = int(step)
        self.write_params()
