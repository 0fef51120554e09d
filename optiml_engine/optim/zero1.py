"""Mixed-precision AdamW over one flat buffer, optionally ZeRO-1 sharded over data parallelism.

The model's parameters (fp32, bf16 or fp16) are laid end to end in a flat fp32 space. Each rank
of the shard group owns one contiguous slice of it and keeps, for that slice only, the fp32
master weights and both Adam moments. A step:

  1. flattens the gradients; with ZeRO-1 reduce-scatters them (sum) so each rank gets its
     slice, otherwise the slice is everything (gradients were already all-reduced);
  2. unscales (fp16), skips the step if any rank saw inf/NaN, computes the global norm (each
     element counted once, see optim.clip) and clips;
  3. runs AdamW on the slice through `kernels.adamw_step` (the backend the recipe's
     `kernels.adamw` picks), one call per weight-decay group of per-parameter views;
  4. all-gathers the updated slices and copies them into the model's parameters.

Weight decay applies to parameters with 2 or more dimensions (OPT-IML: not biases/LayerNorm).
"""

from __future__ import annotations

import torch

from optiml_engine.distributed.mappings import (
    all_gather_into_tensor,
    group_rank,
    group_size,
    reduce_scatter_tensor,
)
from optiml_engine.kernels.adamw import adamw_step
from optiml_engine.optim.clip import clip_coefficient, global_norm
from optiml_engine.optim.loss_scaler import ConstantLossScaler, found_inf_anywhere


class FlatAdamW:
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, shard_group=None, count_weights=None,
                 count_here: bool = True, world_group=None):
        """`count_weights[i]` says whether params[i] counts in the global norm on this rank;
        `count_here=False` drops this rank's whole buffer from the norm (without ZeRO, the
        data-parallel replicas hold identical gradients and only the first one counts).
        `world_group`: every rank of the model (global norm, overflow check); None: one rank."""
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.group, self.world_group = shard_group, world_group
        self.shards = group_size(shard_group)
        self.shard_rank = group_rank(shard_group)
        self.numels = [p.numel() for p in self.params]
        self.offsets = [sum(self.numels[:i]) for i in range(len(self.params))]
        total = sum(self.numels)
        self.shard_size = -(-total // self.shards) if total else 0
        self.padded = self.shard_size * self.shards
        start = self.shard_rank * self.shard_size
        self.start, self.end = start, start + self.shard_size
        counts = count_weights if count_weights is not None else [True] * len(self.params)
        self.master = self._flatten([p.detach() for p in self.params])[self.start:self.end].clone()
        self.exp_avg = torch.zeros_like(self.master)
        self.exp_avg_sq = torch.zeros_like(self.master)
        self.step_count = 0
        pieces = self._pieces()
        # The slice ranges whose gradients count in the global norm on this rank.
        self.counted = [r for i, r in pieces if counts[i] and count_here]
        self.groups = [(decays, [r for i, r in pieces if (self.params[i].ndim >= 2) == decays])
                       for decays in (True, False)]
        self.groups = [(decays, ranges) for decays, ranges in self.groups if ranges]

    def _pieces(self) -> list[tuple[int, tuple[int, int]]]:
        """(i, (lo, hi)) for each params[i] overlapping this rank's slice: the overlap, in
        slice coordinates. AdamW runs on (views of) these; padding is never touched."""
        out = []
        for i, (o, n) in enumerate(zip(self.offsets, self.numels, strict=True)):
            lo, hi = max(o, self.start), min(o + n, self.end)
            if lo < hi:
                out.append((i, (lo - self.start, hi - self.start)))
        return out

    def _local_squares(self, grad: torch.Tensor) -> torch.Tensor:
        """Sum of squares of the counted ranges: one norm per range, no slice-sized temporary."""
        if not self.counted:
            return torch.zeros((), dtype=torch.float32, device=grad.device)
        norms = torch._foreach_norm([grad[lo:hi] for lo, hi in self.counted])
        return torch.stack(norms).double().square().sum().float()

    # -- flat <-> parameters ---------------------------------------------------------------

    def _flatten(self, tensors) -> torch.Tensor:
        device = self.params[0].device if self.params else torch.device("cpu")
        flat = torch.empty(self.padded, dtype=torch.float32, device=device)
        for t, o, n in zip(tensors, self.offsets, self.numels, strict=True):
            if t is None:
                flat[o:o + n].zero_()
            else:  # converts to fp32 in the copy, no temporary
                flat[o:o + n].copy_(t.reshape(-1))
        flat[sum(self.numels):].zero_()  # the padding up to a multiple of the shards
        return flat

    def _gather(self, shard: torch.Tensor) -> torch.Tensor:
        if self.shards == 1:
            return shard
        full = torch.empty(self.padded, dtype=shard.dtype, device=shard.device)
        all_gather_into_tensor(full, shard.contiguous(), group=self.group)
        return full

    def _grad_shard(self) -> torch.Tensor:
        flat = self._flatten([p.grad for p in self.params])
        if self.shards == 1:
            return flat
        shard = torch.empty(self.shard_size, dtype=flat.dtype, device=flat.device)
        reduce_scatter_tensor(shard, flat, group=self.group)
        return shard

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

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
        # The params hold the masters rounded to their dtype, so gathering the rounded slices
        # gives the same bits and moves half the bytes when the model is bf16/fp16.
        dtype = self.params[0].dtype if self.params else torch.float32
        full = self._gather(self.master if self.shards == 1 else self.master.to(dtype))
        for p, o, n in zip(self.params, self.offsets, self.numels, strict=True):
            p.copy_(full[o:o + n].view_as(p))
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

    def param_states(self) -> list[dict[str, torch.Tensor]]:
        """For each parameter: fp32 master, exp_avg, exp_avg_sq shaped like it (all-gathers)."""
        fulls = {k: self._gather(getattr(self, k)) for k in ("master", "exp_avg", "exp_avg_sq")}
        return [{k: f[o:o + n].view(p.shape) for k, f in fulls.items()}
                for p, o, n in zip(self.params, self.offsets, self.numels, strict=True)]

    @torch.no_grad()
    def load_param_states(self, states: list[dict[str, torch.Tensor]], step: int) -> None:
        for key in ("master", "exp_avg", "exp_avg_sq"):
            flat = self._flatten([s[key] for s in states])
            getattr(self, key).copy_(flat[self.start:self.end])
        self.step_count = int(step)
        full = self._gather(self.master)
        for p, o, n in zip(self.params, self.offsets, self.numels, strict=True):
            p.copy_(full[o:o + n].view_as(p))
