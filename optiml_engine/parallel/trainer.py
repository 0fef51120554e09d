"""The trainer under torchrun: the single-process Trainer with the parallel engine plugged in.

Only the parts that differ are replaced: the model (this rank's tensor-parallel slices and
pipeline stage), the optimizer (fp32 master weights, optionally ZeRO-1), the loader (this
data-parallel rank's slice of each global batch), the step, and the checkpoints (sharded DCP
that any layout can load). Console and TensorBoard output come from global rank 0 only.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path

import torch

from optiml_engine.errors import OptimlError
from optiml_engine.optim.schedule import lr_at
from optiml_engine.parallel import checkpoint as pckpt
from optiml_engine.parallel import state
from optiml_engine.parallel.engine import ParallelEngine
from optiml_engine.parallel.init import build_local_model
from optiml_engine.training import checkpoint as ckpt
from optiml_engine.training.trainer import Trainer


def wants_parallel(recipe) -> bool:
    """Use the parallel trainer under torchrun, for any layout but 1x1, or to resume from a
    parallel checkpoint."""
    p = recipe.parallel
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or p.tp > 1 or p.pp > 1:
        return True
    load = recipe.checkpoint.load
    if load:
        path = ckpt.resolve_load_path(load, recipe.checkpoint.dir)
        return path is not None and ckpt.read_meta(path).get("format") == pckpt.FORMAT
    return False


class ParallelTrainer(Trainer):
    def __init__(self, recipe, verbose: bool = True):
        p = recipe.parallel
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if p.sp and p.tp > 1 and recipe.data.seq_length % p.tp:
            raise OptimlError("recipe: data.seq_length", f"{recipe.data.seq_length} tokens cannot "
                              f"be split {p.tp} ways for sequence parallelism",
                              "use a multiple of parallel.tp, or parallel.sp=false")
        dp = int(os.environ.get("WORLD_SIZE", "1")) // (p.tp * p.pp) or 1
        if recipe.train.global_batch_size % (recipe.train.micro_batch_size * dp):
            raise OptimlError("recipe: train.global_batch_size",
                              f"{recipe.train.global_batch_size} samples do not split into "
                              f"micro-batches of {recipe.train.micro_batch_size} over {dp} "
                              "data-parallel ranks", "use a multiple of micro_batch_size x dp")
        if not state.is_initialized():
            state.initialize(p.tp, p.pp, p.backend)
        self.grid = state.grid()
        if self.grid.rank != 0:  # one TensorBoard writer and one console
            recipe = copy.deepcopy(recipe)
            recipe.logging.dir = None
        super().__init__(recipe, verbose=verbose and self.grid.rank == 0)

    def build_model(self):
        """Only this rank's part is ever allocated (parallel/init.py): built on the meta
        device, then filled from the HF directory's slices or OPT's seeded init, or left for
        the checkpoint being resumed to fill."""
        r = self.recipe
        load = r.checkpoint.load
        resuming = bool(load) and ckpt.resolve_load_path(load, r.checkpoint.dir) is not None
        model, source = build_local_model(r, resuming)
        self.engine = ParallelEngine(model, r.parallel, r.optim, r.precision, r.train.seed,
                                     init=source, device=self.device,
                                     loss_chunk_tokens=r.kernels.loss_chunk_tokens)
        return self.engine.model

    def build_optimizer(self):
        return self.engine.optimizer

    def build_evaluator(self):
        """In-training evaluation on this rank's stage (data-parallel replica 0 only)."""
        from optiml_engine.eval.pipeline_eval import layout_evaluator

        return layout_evaluator(super().build_evaluator(), self.engine.chunks)

    def build_loader(self):
        return super().build_loader(self.grid.dp_rank, self.grid.dp)

    def train_step(self) -> dict[str, float]:
        start = time.perf_counter()
        micro_batches = self.loader.next_step()
        lr = lr_at(self.step, self.recipe.optim, self.recipe.train.steps)
        out = self.engine.train_step(micro_batches, lr, self.recipe.optim.clip_grad)
        self.step += 1
        seconds = time.perf_counter() - start
        if out["skipped"]:
            self.logger.info(f"step {self.step}: inf/NaN gradients, step skipped "
                             f"(loss scale now {out['loss_scale']:g})")
        real = sum(float((b["tokens"] != self.tokenizer.pad_id).sum()) for b in micro_batches)
        capacity = sum(b["tokens"].numel() for b in micro_batches)
        return {"loss": out["loss"], "lr": lr, "grad_norm": out["grad_norm"],
                "target_tokens": out["target_tokens"],
                "target_tokens_per_s": out["target_tokens"] / seconds,
                "packing_efficiency": real / capacity,
                "loss_scale": out["loss_scale"], "skipped": out["skipped"]}

    def save(self) -> Path:
        cfg = self.recipe.checkpoint
        path = Path(cfg.dir) / f"step_{self.step:07d}"
        meta = {"step": self.step, "loader": self.loader.state_dict(),
                "layout": {"tp": self.grid.tp, "pp": self.grid.pp, "dp": self.grid.dp},
                "recipe": dataclasses.asdict(self.recipe)}
        pckpt.save(self.engine, path, meta, keep_last=cfg.keep_last)
        self.logger.info(f"saved checkpoint {path}")
        return path

    def resume(self, load: str) -> None:
        path = ckpt.resolve_load_path(load, self.recipe.checkpoint.dir)
        if path is None:
            return
        meta = pckpt.load(self.engine, path)
        if meta.get("format") != pckpt.FORMAT:
            self.logger.info("single-process checkpoint: weights loaded, optimizer state fresh")
        if meta.get("kind") == "train":
            self.step = int(meta["step"])
            self.loader.load_state_dict(meta["loader"])
        self.logger.info(f"loaded {meta.get('kind')} checkpoint {path} at step {self.step}")
