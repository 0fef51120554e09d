"""One training step of an OPT model under any tensor x data x pipeline layout, one process
(1 x 1 x 1) included: each technique whose size is 1 is simply off.

`Engine` takes the model, either whole or on the meta device (model/meta_init.py: only this
rank's part is then ever allocated), keeps this rank's part (tensor-parallel slices, pipeline
stage), and runs steps:

  micro-batches -> (1F1B over stages) forward + backward of sum(loss) * scale / target_tokens
  (with parallel.shard=zero3, each layer's weights gathered for its forward and backward)
  -> tied-embedding sum -> data-parallel gradient sum from persistent buckets, overlapped with
  backward (all-reduce, or reduce-scatter into this rank's slice: parallel.shard, see
  distributed/data_parallel.py) -> sequence-parallel sum -> unscale, skip on inf/NaN,
  global-norm clip, AdamW on fp32 master weights -> loss reported on every rank.

Precision is the recipe's alone, never the process count's: fp32; bf16 weights with fp32
masters; fp16 with fp32 masters and the dynamic loss scaler. A step whose gradients are not
finite is skipped in every dtype (optim/zero1.py, optim/loss_scaler.py).

The forward of a stage is the model's own (`OPTForCausalLM.hidden_states`); the loss is
`kernels.lm_loss_sum` over this rank's vocabulary shard, chunk by chunk of target tokens
(`kernels.loss_chunk_tokens`), its reductions over the tensor-parallel group (a group of one
on one rank). target_tokens counts the loss-mask tokens of the whole global batch (every
micro-batch of every data-parallel rank), OPT-IML's normalisation (§3.2), so every layout
computes the same loss.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.distributed as dist

from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.distributed import mappings, state
from optiml_engine.distributed.interleaved import run_interleaved
from optiml_engine.distributed.pipeline import one_f_one_b
from optiml_engine.distributed.random import checkpoint, model_parallel_seed
from optiml_engine.errors import OptimlError
from optiml_engine.kernels.linear_cross_entropy import DEFAULT_CHUNK
from optiml_engine.kernels.lm_loss import lm_loss_sum
from optiml_engine.model.meta_init import shard_model
from optiml_engine.optim.clip import counts_once_over_tp
from optiml_engine.optim.loss_scaler import build_loss_scaler
from optiml_engine.optim.zero1 import FlatAdamW

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    if mappings.group_size(group) > 1:
        dist.all_reduce(t, group=group)
    return t


def tp_all_reduces(group):
    """The in-place (MAX, SUM) all-reduces over the tensor-parallel group that the loss
    combines its per-shard statistics with (None, None: a group of one)."""
    if mappings.group_size(group) == 1:
        return None, None
    return (partial(dist.all_reduce, op=dist.ReduceOp.MAX, group=group),
            partial(dist.all_reduce, op=dist.ReduceOp.SUM, group=group))


def _recomputed(layer, h, doc_ids, kv_doc_ids, kv_cache):
    if not torch.is_grad_enabled():
        return layer(h, doc_ids, kv_doc_ids, kv_cache)
    return checkpoint(layer, h, doc_ids, kv_doc_ids, kv_cache)


class Engine:
    def __init__(self, model, parallel, optim, precision, seed: int = 0, init=None,
                 device=None, loss_chunk_tokens: int = DEFAULT_CHUNK):
        """parallel, optim, precision: the recipe's ParallelConfig, OptimConfig,
        PrecisionConfig; loss_chunk_tokens: the recipe's kernels.loss_chunk_tokens. The grid
        (distributed.state) must be initialised, or absent for 1 rank. A model on the meta
        device is sharded there, then its local parameters are materialised on `device` by
        `init` (a model.meta_init source; default: OPT's random init from the model's seed)."""
        g = self.grid = state.grid()
        self.virtual = parallel.virtual_stages
        if self.virtual > 1 and g.pp == 1:
            raise OptimlError("recipe: parallel.virtual_stages",
                              "the interleaved schedule needs parallel.pp > 1",
                              "set parallel.virtual_stages=1, or parallel.pp > 1")
        if parallel.tp != g.tp or parallel.pp != g.pp:
            raise ValueError(f"recipe layout tp={parallel.tp} pp={parallel.pp} differs from "
                             f"the initialised grid tp={g.tp} pp={g.pp}")
        if model.config.num_layers < g.pp * self.virtual:
            raise OptimlError("recipe: parallel.pp",
                              f"{g.pp} x {self.virtual} pipeline stages for "
                              f"{model.config.num_layers} layers",
                              "use at most one stage per layer")
        g.virtual = self.virtual
        self.sp = parallel.sp and g.tp > 1
        self.run_layer = _recomputed if parallel.recompute == "full" else None
        self.first, self.last = state.is_first_stage(), state.is_last_stage()
        self.chunks, self.init_stats = shard_model(model, g, state.tp_group(), self.sp, init,
                                                   device)
        model_parallel_seed(seed, g.tp_rank, g.pp_rank, g.tp)
        self.model = model
        self.config = model.config
        params = [p for p in model.parameters() if p.requires_grad]
        tied = model.decoder.embed_tokens.weight if g.pp > 1 and self.last else None
        self.tied_weight = model.decoder.embed_tokens.weight if g.pp > 1 and (
            self.first or self.last) else None
        counts = [counts_once_over_tp(p, g.tp_rank) and p is not tied for p in params]
        self.counts = counts
        self.tied_copy = tied  # the last stage's copy: the first stage saves its state
        self.shard = parallel.shard if g.dp > 1 else "none"
        self.dtype = DTYPES[precision.dtype]
        layers = [layer for chunk in self.chunks for layer in chunk]
        self.optimizer = FlatAdamW(
            params, lr=optim.lr, betas=optim.betas, eps=optim.eps,
            weight_decay=optim.weight_decay, shard_group=state.dp_group(),
            count_weights=counts, count_here=self.shard != "none" or g.dp_rank == 0,
            world_group=state.world_group(), shard=self.shard, dtype=self.dtype,
            bucket_mb=parallel.bucket_mb,
            late=[self.tied_weight] if self.tied_weight is not None else [],
            units=[list(layer.parameters()) for layer in layers])
        if self.shard == "zero3":  # gathered per layer for forward and backward
            for layer in layers:
                self.optimizer.buffers.hook_module(layer, list(layer.parameters()))
        # The optimizer took its fp32 masters and moved the parameters into its buffers in
        # the recipe's dtype; floating buffers (none in OPT) follow. (model.to would reassign
        # every parameter, which a zero3 one, empty between uses, refuses.)
        for module in model.modules():
            for name, buf in module.named_buffers(recurse=False):
                if buf.is_floating_point():
                    setattr(module, name, buf.to(self.dtype))
        self.scaler = build_loss_scaler(precision)
        self.tp_reduce_max, self.tp_reduce_sum = tp_all_reduces(state.tp_group())
        self.loss_chunk_tokens = loss_chunk_tokens
        self.device = params[0].device

    # -- forward of this stage ----------------------------------------------------------------

    def stage_forward(self, batch, x, chunk: int = 0):
        """The received activation x (None on the first stage) -> activation to send, or the
        fp32 summed masked loss on the last stage."""
        first = self.first and chunk == 0
        last = self.last and chunk == self.virtual - 1
        h = self.model.hidden_states(batch["tokens"] if first else x, batch["position_ids"],
                                     batch["doc_ids"], layers=self.chunks[chunk], embed=first,
                                     head=last, run_layer=self.run_layer)
        if not last:
            return h
        if self.sp:
            h = mappings.gather_from_sequence_parallel_region(h)
        else:
            h = mappings.copy_to_tp_region(h)
        emb = self.model.decoder.embed_tokens
        return lm_loss_sum(h, emb.weight, batch["labels"], batch["loss_mask"],
                           self.loss_chunk_tokens, getattr(emb, "vocab_start", 0),
                           self.tp_reduce_max, self.tp_reduce_sum)

    def full_weights(self):
        """Context: every weight of this rank's part whole (ZeRO-3 layers gathered, their
        per-layer gathers off), so a subset of data-parallel ranks may run forwards; every
        data-parallel rank must enter it. A no-op without ZeRO-3."""
        return self.optimizer.buffers.gathered()

    def num_parameters(self) -> int:
        """Parameters of the whole model (every element once), whatever this rank holds."""
        counted = [shape.numel() for shape, counts in
                   zip(self.optimizer.shapes, self.counts, strict=True) if counts]
        total = torch.tensor([float(sum(counted))], dtype=torch.float64, device=self.device)
        if state.mp_group() is not None:
            dist.all_reduce(total, group=state.mp_group())
        return int(total[0])

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
            if i == last_micro if final is None else final:
                self.optimizer.buffers.sync = True
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
        elif g.pp == 1:  # Megatron's forward_backward_no_pipelining
            for i in range(len(batches)):
                backward_step(i, None, forward_step(i, None), None)
        else:
            one_f_one_b(forward_step, backward_step, len(batches), g.pp_rank, g.pp,
                        state.pp_ranks(), self.activation_shape(batches[0]), self.dtype,
                        self.device)
        self.sync_grads()
        loss = torch.zeros(1, dtype=torch.float64, device=self.device)
        if losses:
            loss += sum(float(v) for v in losses)
        _all_reduce(loss, state.dp_group())
        _all_reduce(loss, state.pp_group())  # only the last stage holds a non-zero sum
        loss = float(loss[0]) / max(n_tokens, 1.0)
        # A non-finite loss skips the step on every rank (they all hold the same loss), even
        # where the gradients happen to stay finite.
        out = self.optimizer.step(lr, max_norm, self.scaler, skip=not math.isfinite(loss))
        return {"loss": loss, "target_tokens": n_tokens, **out}

    def sync_grads(self) -> torch.Tensor:
        """The tied-weight sum (before the data-parallel one: the stages' layouts differ), the
        data-parallel sum, then the sequence-parallel sum over the tensor-parallel group, done on
        the reduced local space (the same layout on every tensor-parallel rank)."""
        if self.tied_weight is not None and self.tied_weight.grad is not None:
            _all_reduce(self.tied_weight.grad, state.embed_group())
        grads = self.optimizer.buffers.finish()
        if self.sp:
            opt = self.optimizer
            ranges = [(at, at + hi - lo) for i, lo, hi, at in opt.pieces
                      if getattr(opt.params[i], "sequence_parallel", False)]
            if ranges:
                flat = torch.cat([grads[a:b] for a, b in ranges])
                _all_reduce(flat, state.tp_group())
                at = 0
                for a, b in ranges:
                    grads[a:b].copy_(flat[at:at + b - a])
                    at += b - a
        return grads

    # -- checkpoint state (layout independent: see distributed/checkpoint.py) -------------------

    def tensors(self, with_optimizer: bool = True, with_master: bool | None = None,
                saving: bool = True) -> dict:
        """The nested state DCP saves, or loads in place: the weights, and this rank's slices
        of the optimizer state as views of the local space (distributed/flat_chunks.py: no
        gather, no copy). Saving, the last stage leaves the tied embedding's state to the first
        (they hold the same values in different layouts)."""
        out = {"model": ckpt.model_state(self.model)}
        if not with_optimizer:
            return out
        if with_master is None:
            with_master = self.dtype != torch.float32
        opt = self.optimizer
        index = {id(p): i for i, p in enumerate(opt.params)}
        named = [(n, p) for n, p in self.model.named_parameters()
                 if not (saving and p is self.tied_copy)]

        def chunks(key, p):
            i = index[id(p)]
            return ckpt.chunks_like_param(opt.state_runs(key, i), opt.shapes[i], p)

        out["optim"] = {"state": {n: {k: chunks(k, p) for k in ("exp_avg", "exp_avg_sq")}
                                  for n, p in named}}
        if with_master:
            out["master"] = {n: chunks("master", p) for n, p in named}
        return out

    def meta(self) -> dict:
        return {"optimizer_step": self.optimizer.step_count,
                "loss_scaler": self.scaler.state_dict(),
                "has_master": self.dtype != torch.float32}

    def load(self, path, verify: bool = True) -> dict:
        """Weights, and the optimizer state when the checkpoint has it (any format, any layout),
        straight into this rank's part; returns the checkpoint's meta."""
        meta = ckpt.read_meta(path)
        with_optim = meta.get("kind") == "train"
        sd = self.tensors(with_optim, with_master=bool(meta.get("has_master")), saving=False)
        ckpt.load(path, sd, verify)
        ckpt.copy_loaded_weights(self.model, sd["model"])
        opt = self.optimizer
        if not with_optim:  # a weights-only checkpoint (convert hf2engine, initial): fresh moments
            opt.masters_from_params()
            opt.exp_avg.zero_()
            opt.exp_avg_sq.zero_()
            opt.step_count = 0
            return meta
        if "master" in sd:
            opt.write_params()  # the weights are the masters rounded
        else:  # fp32 weights are their own masters
            opt.masters_from_params()
        opt.step_count = int(meta.get("optimizer_step", meta.get("step", 0)))  # unversioned:
        self.scaler.load_state_dict(meta.get("loss_scaler", {}))  # no skipped steps
        return meta
