"""One training step of an OPT model under any tensor x data x pipeline layout.

`ParallelEngine` takes the model, either whole (initialised identically on every rank) or on the
meta device (parallel/init.py: only this rank's part is then ever allocated), keeps this rank's
part (tensor-parallel slices, pipeline stage), and runs steps:

  micro-batches -> (1F1B over stages) forward + backward of sum(loss) * scale / target_tokens
  -> data-parallel gradient sum (bucketed all-reduce overlapped with backward, or ZeRO-1's
  reduce-scatter) -> sequence-parallel and tied-embedding gradient sums -> unscale, skip on
  inf/NaN, global-norm clip, AdamW on fp32 master weights -> loss reported on every rank.

The loss (kernels.linear_cross_entropy over vocabulary shards, chunk by chunk of target tokens,
so the logits never exist in full; or kernels.vocab_parallel_cross_entropy on full logits when
loss_chunk_tokens is 0) and the AdamW update (kernels.adamw_step, in optim/zero1.py) run on the
backends the recipe's `kernels:` section picks (kernels.dispatch).

target_tokens counts the loss-mask tokens of the whole global batch (every micro-batch of every
data-parallel rank), OPT-IML's normalisation, so every layout computes the same loss.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F

from optiml_engine.errors import OptimlError
from optiml_engine.kernels.linear_cross_entropy import DEFAULT_CHUNK, linear_cross_entropy
from optiml_engine.kernels.vocab_parallel_cross_entropy import vocab_parallel_cross_entropy
from optiml_engine.optim.clip import counts_once_over_tp
from optiml_engine.optim.loss_scaler import build_loss_scaler
from optiml_engine.optim.zero1 import FlatAdamW
from optiml_engine.parallel import mappings, state
from optiml_engine.parallel.data_parallel import GradBucketer
from optiml_engine.parallel.init import Layout, shard_model
from optiml_engine.parallel.interleaved import run_interleaved
from optiml_engine.parallel.pipeline import one_f_one_b
from optiml_engine.parallel.random import checkpoint, model_parallel_seed
from optiml_engine.parallel.tensor_parallel import sync_sequence_parallel_grads

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    if mappings.group_size(group) > 1:
        dist.all_reduce(t, group=group)
    return t


def _in_place_identity(t: torch.Tensor) -> torch.Tensor:
    return t


def tp_all_reduces(group):
    """The in-place (MAX, SUM) all-reduces over the tensor-parallel group that
    kernels.vocab_parallel_cross_entropy combines its per-shard statistics with."""
    if mappings.group_size(group) == 1:
        return _in_place_identity, _in_place_identity
    return (partial(dist.all_reduce, op=dist.ReduceOp.MAX, group=group),
            partial(dist.all_reduce, op=dist.ReduceOp.SUM, group=group))


class ParallelEngine:
    def __init__(self, model, parallel, optim, precision, seed: int = 0, init=None,
                 device=None, loss_chunk_tokens: int = DEFAULT_CHUNK):
        """parallel, optim, precision: the recipe's ParallelConfig, OptimConfig,
        PrecisionConfig; loss_chunk_tokens: the recipe's kernels.loss_chunk_tokens. The grid
        (parallel.state) must be initialised, or absent for 1 rank. A model on the meta device
        is sharded there, then its local parameters are materialised on `device` by `init` (a
        parallel.init source; default: OPT's random init from the model's seed)."""
        g = self.grid = state.grid()
        self.virtual = parallel.virtual_stages
        if self.virtual > 1 and (g.pp == 1 or dist.get_backend() != "gloo"):
            raise OptimlError("recipe: parallel.virtual_stages",
                              "the interleaved schedule needs parallel.pp > 1 and gloo (its "
                              "message order under NCCL is not verified yet)",
                              "set parallel.virtual_stages=1 (1F1B)")
        if parallel.tp != g.tp or parallel.pp != g.pp:
            raise ValueError(f"recipe layout tp={parallel.tp} pp={parallel.pp} differs from "
                             f"the initialised grid tp={g.tp} pp={g.pp}")
        if model.config.num_layers < g.pp * self.virtual:
            raise OptimlError("recipe: parallel.pp",
                              f"{g.pp} x {self.virtual} pipeline stages for "
                              f"{model.config.num_layers} layers",
                              "use at most one stage per layer")
        self.sp = parallel.sp and g.tp > 1
        self.recompute = parallel.recompute == "full"
        self.first, self.last = state.is_first_stage(), state.is_last_stage()
        layout = Layout(g.tp_rank, g.tp, g.pp_rank, g.pp, self.virtual)
        self.chunks, self.init_stats = shard_model(model, layout, state.tp_group(), self.sp,
                                                   init, device)
        if g.tp > 1:
            model_parallel_seed(seed, g.tp_rank)
        self.model = model
        self.config = model.config
        params = [p for p in model.parameters() if p.requires_grad]
        tied = model.decoder.embed_tokens.weight if g.pp > 1 and self.last else None
        self.tied_weight = model.decoder.embed_tokens.weight if g.pp > 1 and (
            self.first or self.last) else None
        counts = [counts_once_over_tp(p, g.tp_rank) and p is not tied for p in params]
        zero1 = parallel.zero1 and g.dp > 1
        self.optimizer = FlatAdamW(
            params, lr=optim.lr, betas=optim.betas, eps=optim.eps,
            weight_decay=optim.weight_decay, shard_group=state.dp_group() if zero1 else None,
            count_weights=counts, count_here=zero1 or g.dp_rank == 0,
            world_group=state.world_group())
        self.dtype = DTYPES[precision.dtype]
        model.to(self.dtype)  # after the optimizer took its fp32 master copy
        self.bucketer = None if zero1 else GradBucketer(params, state.dp_group(),
                                                        parallel.bucket_mb)
        self.scaler = build_loss_scaler(precision)
        self.tp_reduce_max, self.tp_reduce_sum = tp_all_reduces(state.tp_group())
        self.loss_chunk_tokens = loss_chunk_tokens
        self.device = params[0].device

    # -- forward of this stage ----------------------------------------------------------------

    def stage_forward(self, batch, x, chunk: int = 0):
        """The received activation x (None on the first stage) -> activation to send, or the
        fp32 summed masked loss on the last stage."""
        dec = self.model.decoder
        first = self.first and chunk == 0
        last = self.last and chunk == self.virtual - 1
        h = dec.embed(batch["tokens"], batch["position_ids"]) if first else x
        doc_ids = batch["doc_ids"]
        for layer in self.chunks[chunk]:
            if self.recompute and torch.is_grad_enabled():
                h = checkpoint(layer, h, doc_ids, doc_ids)
            else:
                h = layer(h, doc_ids, doc_ids)
        if not last:
            return h
        h = dec.head(h)
        if self.sp:
            h = mappings.gather_from_sequence_parallel_region(h)
        else:
            h = mappings.copy_to_tp_region(h)
        vocab_start = getattr(dec.embed_tokens, "vocab_start", 0)
        if self.loss_chunk_tokens:
            sharded = self.grid.tp > 1  # one rank: the single-device loss-and-gradient path
            return linear_cross_entropy(
                h, dec.embed_tokens.weight, batch["labels"], batch["loss_mask"],
                self.loss_chunk_tokens, vocab_start=vocab_start,
                all_reduce_max=self.tp_reduce_max if sharded else None,
                all_reduce_sum=self.tp_reduce_sum if sharded else None)
        logits = F.linear(h, dec.embed_tokens.weight)
        return vocab_parallel_cross_entropy(logits, batch["labels"], batch["loss_mask"],
                                            vocab_start, self.tp_reduce_max, self.tp_reduce_sum)

    def activation_shape(self, batch) -> tuple[int, int, int]:
        b, s = batch["tokens"].shape
        return (b, s // self.grid.tp if self.sp else s, self.config.hidden_size)

    # -- one step -----------------------------------------------------------------------------

    def train_step(self, micro_batches, lr: float, max_norm: float) -> dict[str, float]:
        """micro_batches: this data-parallel rank's dicts of tokens, labels, loss_mask,
        position_ids, doc_ids (all [micro_batch, seq])."""
        g = self.grid
        batches = [{k: v.to(self.device) for k, v in b.items()} for b in micro_batches]
        n_tokens = torch.tensor([sum(float(b["loss_mask"].sum()) for b in batches)],
                                dtype=torch.float64, device=self.device)
        n_tokens = float(_all_reduce(n_tokens, state.dp_group())[0])
        weight = self.scaler.scale / max(n_tokens, 1.0)
        self.optimizer.zero_grad()
        losses: list[torch.Tensor] = []
        last_micro = len(batches) - 1

        def forward_step(i, x):
            return self.stage_forward(batches[i], x)

        def backward_step(i, x, y, dy, final=None, chunk=None):
            if self.bucketer is not None and (i == last_micro if final is None else final):
                self.bucketer.sync = True
            if self.last and (chunk is None or chunk == self.virtual - 1):
                losses.append(y.detach())
                torch.autograd.backward(y * weight)
            else:
                torch.autograd.backward(y, dy)
            return x.grad if x is not None else None

        if self.virtual > 1:
            run_interleaved(lambda c, m, x: self.stage_forward(batches[m], x, c),
                            lambda c, m, x, y, dy, final: backward_step(m, x, y, dy, final, c),
                            len(batches), g.pp_rank, g.pp, self.virtual, state.pp_ranks(),
                            self.activation_shape(batches[0]), self.dtype, self.device)
        elif g.pp == 1:
            for i in range(len(batches)):
                backward_step(i, None, forward_step(i, None), None)
        else:
            one_f_one_b(forward_step, backward_step, len(batches), g.pp_rank, g.pp,
                        state.pp_ranks(), self.activation_shape(batches[0]), self.dtype,
                        self.device)
        self.sync_grads()
        out = self.optimizer.step(lr, max_norm, self.scaler)
        loss = torch.zeros(1, dtype=torch.float64, device=self.device)
        if losses:
            loss += sum(float(v) for v in losses)
        _all_reduce(loss, state.dp_group())
        _all_reduce(loss, state.pp_group())  # only the last stage holds a non-zero sum
        return {"loss": float(loss[0]) / max(n_tokens, 1.0), "target_tokens": n_tokens, **out}

    def sync_grads(self) -> None:
        """Finish the data-parallel sum, then the tensor-parallel (SP) and tied-weight sums."""
        if self.bucketer is not None:
            self.bucketer.finish()
        if self.sp:
            sync_sequence_parallel_grads(self.model, state.tp_group())
        if self.tied_weight is not None and self.tied_weight.grad is not None:
            _all_reduce(self.tied_weight.grad, state.embed_group())
