"""The training loop, the same for every layout (one process is the 1 x 1 x 1 layout):
micro-batches -> `Engine.train_step` -> log, evaluate, checkpoint.

The loss of a step is the sum of the cross-entropy over every target token of every micro-batch
of every data-parallel rank, divided by the number of target tokens in the whole step, so N
micro-batches of accumulation give the gradients of one large batch (OPT-IML §3.2).

Console and TensorBoard output come from global rank 0 only. The in-training evaluator is
handed in (`evaluator(model, chunks, step) -> scalars`, built by eval.pipeline_eval), so
training never imports evaluation.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from optiml_engine.config import Recipe
from optiml_engine.data.dataset import build_loader
from optiml_engine.data.tokenizer import load_tokenizer
from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.distributed import state
from optiml_engine.distributed.run_dir import DirectoryLock, clean_leftovers, on_rank0
from optiml_engine.errors import OptimlError
from optiml_engine.kernels import dispatch
from optiml_engine.model.flops import PEAK_TFLOPS, device_peak_key, step_flops
from optiml_engine.model.meta_init import build_local_model
from optiml_engine.optim.schedule import lr_at
from optiml_engine.training.cpu_alloc import keep_freed_memory
from optiml_engine.training.engine import Engine
from optiml_engine.training.logger import MetricsLogger
from optiml_engine.training.resume import incompatibility


def _check_layout(recipe: Recipe) -> None:
    p = recipe.parallel
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


class Trainer:
    def __init__(self, recipe: Recipe, verbose: bool = True, make_evaluator=None):
        """make_evaluator(recipe, tokenizer) -> evaluator or None (eval.pipeline_eval's
        `training_evaluator`); None: no in-training evaluation."""
        _check_layout(recipe)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            keep_freed_memory()  # glibc reuses a step's freed blocks (training/cpu_alloc.py)
        p = recipe.parallel
        self.owns_grid = not state.is_initialized()
        # A process group that was there before (a test's, a sweep's) outlives this run.
        self.keep_process_group = dist.is_available() and dist.is_initialized()
        if self.owns_grid:
            state.initialize(p.tp, p.pp, p.backend, virtual=p.virtual_stages,
                             timeout_minutes=p.timeout_minutes)
        self.grid = state.grid()
        self.recipe = recipe
        if self.grid.rank != 0:  # one TensorBoard writer and one console
            recipe = copy.deepcopy(recipe)
            recipe.logging.dir = None
        # The data first: a bad data section fails in seconds, before any model or writer.
        self.tokenizer = load_tokenizer(recipe.data.tokenizer)
        self.loader = build_loader(self.recipe, self.tokenizer, self.grid.dp_rank, self.grid.dp)
        self.logger = MetricsLogger(recipe.logging.dir, recipe.train.steps,
                                    console=verbose and self.grid.rank == 0)
        self.run_id = uuid.uuid4().hex[:12]  # rotation deletes only this run's checkpoints
        self.lock = None
        self.pending_save = None  # checkpoint.async_save: the checkpoint being written
        try:
            self._start(recipe, make_evaluator)
        except BaseException:
            self.close()
            raise

    def _start(self, recipe, make_evaluator) -> None:
        choices = dispatch.configure(recipe.kernels, self.device)
        self.logger.info("kernels: " + ", ".join(f"{k} {v}" for k, v in choices.items()))
        c = self.recipe.checkpoint
        if c.dir:  # the run owns its directory from here on
            self.lock = DirectoryLock(c.dir, self.run_id, warn=self.logger.info)
            on_rank0(self._take_directory)
        load_path = self.find_checkpoint()
        self.engine = self.build_engine(resuming=load_path is not None)
        self.model = self.engine.model
        self.peak_flops = self._peak_flops()
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise OptimlError(
                "recipe: model.vocab_size",
                f"{self.model.config.vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size}",
                "raise model.vocab_size",
            )
        self.step = 0
        self.history: list[dict[str, float]] = []
        # Built from this rank's recipe: only global rank 0 has a logging.dir to append to.
        self.evaluator = make_evaluator(recipe, self.tokenizer) if make_evaluator else None
        if load_path is not None:
            self.resume(load_path)
        g = self.grid
        self.logger.info(f"layout tp {g.tp} x pp {g.pp} x dp {g.dp} | "
                         f"{self.engine.num_parameters() / 1e6:.2f}M parameters "
                         f"({recipe.precision.dtype}) | {self.loader.describe()}")

    def _take_directory(self) -> None:
        """Lock checkpoint.dir, then remove what dead runs left in it (global rank 0)."""
        self.lock.acquire()
        clean_leftovers(self.recipe.checkpoint.dir, self.logger.info)

    def find_checkpoint(self) -> Path | None:
        """checkpoint.load resolved: `latest` passes over incomplete or corrupt checkpoints
        (saying so) to the newest good one; None: a fresh start."""
        c = self.recipe.checkpoint
        if not c.load:
            return None
        skipped: list = []
        path = ckpt.resolve_load_path(c.load, c.dir, c.verify, skipped)
        for bad, why in skipped:
            self.logger.info(f"warning: skipping checkpoint {bad.name}: {why}")
        if path is None and skipped:
            raise OptimlError(f"checkpoint.dir: {c.dir}", f"no good checkpoint to resume "
                              f"({len(skipped)} corrupt)", "set checkpoint.load to null to start "
                              "fresh, or use another checkpoint.dir")
        return path

    def build_engine(self, resuming: bool) -> Engine:
        """Only this rank's part is ever allocated (model/meta_init.py): built on the meta
        device, then filled from the HF directory's slices or OPT's seeded init, or left for
        the checkpoint being resumed to fill."""
        r = self.recipe
        model, source = build_local_model(r, resuming)
        return Engine(model, r.parallel, r.optim, r.precision, r.train.seed, init=source,
                      device=self.device, loss_chunk_tokens=r.kernels.loss_chunk_tokens)

    # -- one step ---------------------------------------------------------------------------

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
        # This rank's data-parallel shard's needed FLOPs (model/flops.py), split over the
        # tp x pp ranks that compute it; every shard holds the same number of tokens.
        g = self.grid
        flops = step_flops(self.engine.config, micro_batches, self.tokenizer.pad_id)
        flops_per_s = flops / (g.tp * g.pp) / seconds
        speed = {"tokens_per_s": capacity * g.dp / seconds, "tflops_per_gpu": flops_per_s / 1e12}
        if self.peak_flops:
            speed["mfu"] = flops_per_s / self.peak_flops
        return {"loss": out["loss"], "lr": lr, "grad_norm": out["grad_norm"],
                "target_tokens": out["target_tokens"],
                "target_tokens_per_s": out["target_tokens"] / seconds,
                "packing_efficiency": real / capacity, **speed,
                "loss_scale": out["loss_scale"], "skipped": out["skipped"]}

    def _peak_flops(self) -> float | None:
        """FLOP/s per device that train/mfu divides by: logging.peak_tflops, else the
        device's entry in model/flops.py; None (said once) when neither gives one."""
        if self.recipe.logging.peak_tflops is not None:
            return self.recipe.logging.peak_tflops * 1e12
        name, gib = "cpu", 0.0
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            name, gib = props.name, props.total_memory / 2**30
        key = device_peak_key(name, gib)
        if key is None or PEAK_TFLOPS[key] is None:
            self.logger.info(f"train/mfu not logged: no peak FLOP/s for {name} in "
                             "model/flops.py PEAK_TFLOPS; set logging.peak_tflops")
            return None
        return PEAK_TFLOPS[key] * 1e12

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> list[dict[str, float]]:
        try:
            return self._fit()
        finally:
            try:
                self.wait_for_save()  # also after a failure: that checkpoint is good
            finally:
                self.logger.close()
                self.close()

    def close(self) -> None:
        """Finish a checkpoint being written, then give back the checkpoint directory and the
        grid this trainer took."""
        try:
            self.wait_for_save()
        finally:
            self._release()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.owns_grid and state.is_initialized():
            state.destroy(keep_process_group=self.keep_process_group)

    def _fit(self) -> list[dict[str, float]]:
        cfg = self.recipe
        self.model.train()
        last = min(cfg.train.steps, cfg.train.stop_after or cfg.train.steps)
        if cfg.logging.dir and self.grid.rank == 0:
            Path(cfg.logging.dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.logging.dir) / ckpt.RECIPE).write_text(cfg.to_yaml())
        if cfg.checkpoint.dir and cfg.checkpoint.save_initial and self.step == 0:
            path = ckpt.save_weights(Path(cfg.checkpoint.dir) / "initial", self.model,
                                     {"run": self.run_id}, recipe_yaml=cfg.to_yaml())
            self.logger.info(f"saved the untrained model to {path}")
        window: list[dict[str, float]] = []
        self.logger.start(self.step)
        while self.step < last:
            metrics = self.train_step()
            self.history.append(metrics)
            self.logger.scalars(self.step, metrics)
            window.append(metrics)
            if self.step % cfg.logging.interval == 0 or self.step == last:
                # The console shows means over the interval: one step's loss is too noisy to read.
                self.logger.progress(
                    self.step, {k: sum(m[k] for m in window) / len(window) for k in metrics}
                )
                window = []
            if self.evaluator is not None and self.step % cfg.eval.interval == 0:
                with self.engine.full_weights():  # ZeRO-3: replica 0 alone runs forwards
                    scores = self.evaluator(self.model, self.engine.chunks, self.step)
                self.model.train()
                self.logger.scalars(self.step, scores, prefix=None)
                self.logger.info(" | ".join(f"{k} {v:.1f}" for k, v in scores.items()
                                            if k.startswith("eval/subset/level/")))
            interval = cfg.checkpoint.interval
            if cfg.checkpoint.dir and (
                (interval and self.step % interval == 0) or self.step == last
            ):
                self.save()
        return self.history  # fit() finishes a checkpoint still being written

    # -- checkpoints ------------------------------------------------------------------------

    def save(self) -> Path:
        """Write a checkpoint of this step (checkpoint.async_save: in the background, after
        finishing the previous one; the path returned is complete after wait_for_save)."""
        self.wait_for_save()
        cfg = self.recipe
        path = Path(cfg.checkpoint.dir) / f"step_{self.step:07d}"
        meta = {"step": self.step, "run": self.run_id, "loader": self.loader.state_dict(),
                **self.engine.meta(), "recipe": dataclasses.asdict(cfg),
                "model_config": dataclasses.asdict(self.engine.config)}
        done = ckpt.save(path, self.engine.tensors(), meta, recipe_yaml=cfg.to_yaml(),
                         keep_last=cfg.checkpoint.keep_last,
                         blocking=not cfg.checkpoint.async_save)
        if isinstance(done, ckpt.PendingSave):
            self.pending_save = done
        else:
            self.logger.info(f"saved checkpoint {path}")
        return path

    def wait_for_save(self) -> None:
        """Finish the checkpoint being written in the background, if any; its write's failure
        is raised here (once)."""
        pending, self.pending_save = self.pending_save, None
        if pending is not None:
            self.logger.info(f"saved checkpoint {pending.wait()}")

    def resume(self, path: Path) -> None:
        self.wait_for_save()
        latest = self.recipe.checkpoint.load == "latest"
        meta = ckpt.read_meta(path)
        if latest and meta.get("kind") == "train":
            why = incompatibility(meta, self.recipe, self.engine.config)
            if why is not None:
                raise OptimlError(f"checkpoint.load=latest: {path}",
                                  f"was saved by another run: {why}",
                                  "start fresh with another checkpoint.dir, or resume it anyway "
                                  f"with checkpoint.load={path}")
        # `latest` was verified while choosing it.
        meta = self.engine.load(path, verify=self.recipe.checkpoint.verify and not latest)
        if meta.get("kind") != "train":
            self.logger.info(f"loaded the weights of {path}; optimizer state fresh")
            return
        self.step = int(meta["step"])
        self.loader.load_state_dict(meta["loader"])
        self.run_id = meta.get("run", self.run_id)  # a resumed run rotates its own checkpoints
        saved = meta.get("layout")
        if saved == ckpt.layout() and ckpt.load_rng(path):
            rng = "RNG streams restored"
        else:  # dropout masks differ from the uninterrupted run's from here on
            rng = f"RNG streams fresh (saved under {saved}, running under {ckpt.layout()})"
        self.logger.info(f"resumed {path} at step {self.step}; {rng}")
