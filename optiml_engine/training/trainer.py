"""The training loop: micro-batches -> summed masked loss -> one optimizer step.

The loss of a step is the sum of the cross-entropy over every target token of every micro-batch,
divided by the number of target tokens in the whole step, so N micro-batches of accumulation
give the gradients of one large batch (OPT-IML's normalisation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import torch

from optiml_engine.config import Recipe
from optiml_engine.data.dataset import build_loader
from optiml_engine.data.tokenizer import load_tokenizer
from optiml_engine.errors import OptimlError
from optiml_engine.kernels import dispatch
from optiml_engine.model import OPTForCausalLM
from optiml_engine.optim.builder import build_optimizer
from optiml_engine.optim.schedule import lr_at
from optiml_engine.training import checkpoint as ckpt
from optiml_engine.training.logger import MetricsLogger

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(recipe: Recipe) -> OPTForCausalLM:
    """Weights from model.hf_path, else OPT's random initialisation from train.seed."""
    if recipe.model.hf_path:
        model = OPTForCausalLM.from_hf(recipe.model.hf_path)
        model.config.dropout = recipe.model.dropout
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = recipe.model.dropout
        return model
    torch.manual_seed(recipe.train.seed)
    return OPTForCausalLM(recipe.model)


class Trainer:
    def __init__(self, recipe: Recipe, verbose: bool = True):
        self.recipe = recipe
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.logger = MetricsLogger(recipe.logging.dir, recipe.train.steps, console=verbose)
        self.tokenizer = load_tokenizer(recipe.data.tokenizer)
        choices = dispatch.configure(recipe.kernels, self.device)
        self.logger.info("kernels: " + ", ".join(f"{k} {v}" for k, v in choices.items()))
        self.model = self.build_model()
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise OptimlError(
                "recipe: model.vocab_size",
                f"{self.model.config.vocab_size} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size}",
                "raise model.vocab_size",
            )
        self.optimizer = self.build_optimizer()
        self.loader = self.build_loader()
        self.step = 0
        self.history: list[dict[str, float]] = []
        if recipe.checkpoint.load:
            self.resume(recipe.checkpoint.load)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.logger.info(f"model: {n_params / 1e6:.2f}M parameters | {self.loader.describe()}")

    # -- parts a subclass may replace (parallel.trainer.ParallelTrainer does) ------------------

    def build_model(self) -> OPTForCausalLM:
        return build_model(self.recipe).to(self.device)

    def build_optimizer(self):
        return build_optimizer(self.model, self.recipe.optim)

    def build_loader(self, dp_rank: int = 0, dp_size: int = 1):
        return build_loader(self.recipe, self.tokenizer, dp_rank, dp_size)

    # -- one step ---------------------------------------------------------------------------

    def autocast(self):
        dtype = AUTOCAST_DTYPES.get(self.recipe.precision.dtype)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def forward_backward(self, micro_batches, n_target_tokens) -> torch.Tensor:
        """Accumulate gradients of sum(loss) / n_target_tokens; return the summed loss."""
        total = torch.zeros((), device=self.device)
        for batch in micro_batches:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self.autocast():
                loss_sum = self.model.loss_sum(
                    batch["tokens"],
                    batch["position_ids"],
                    batch["doc_ids"],
                    batch["labels"],
                    batch["loss_mask"],
                    chunk_tokens=self.recipe.kernels.loss_chunk_tokens,
                )
            (loss_sum / n_target_tokens).backward()
            total += loss_sum.detach()
        return total

    def train_step(self) -> dict[str, float]:
        start = time.perf_counter()
        micro_batches = self.loader.next_step()
        n_target_tokens = sum(float(b["loss_mask"].sum()) for b in micro_batches)
        lr = lr_at(self.step, self.recipe.optim, self.recipe.train.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = self.forward_backward(micro_batches, max(n_target_tokens, 1.0))
        clip = self.recipe.optim.clip_grad
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), clip if clip > 0 else float("inf")
        )
        self.optimizer.step()
        self.step += 1
        seconds = time.perf_counter() - start
        real = sum(float((b["tokens"] != self.tokenizer.pad_id).sum()) for b in micro_batches)
        capacity = sum(b["tokens"].numel() for b in micro_batches)
        return {
            "loss": float(loss_sum) / max(n_target_tokens, 1.0),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "target_tokens": n_target_tokens,
            "target_tokens_per_s": n_target_tokens / seconds,
            "packing_efficiency": real / capacity,
        }

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> list[dict[str, float]]:
        cfg = self.recipe
        self.model.train()
        last = min(cfg.train.steps, cfg.train.stop_after or cfg.train.steps)
        if cfg.checkpoint.dir and cfg.checkpoint.save_initial and self.step == 0:
            path = ckpt.save_checkpoint(Path(cfg.checkpoint.dir) / "initial", self.model,
                                        meta={"step": 0, "recipe": dataclasses.asdict(cfg)})
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
            interval = cfg.checkpoint.interval
            if cfg.checkpoint.dir and (
                (interval and self.step % interval == 0) or self.step == last
            ):
                self.save()
        self.logger.close()
        return self.history

    # -- checkpoints ------------------------------------------------------------------------

    def save(self) -> Path:
        cfg = self.recipe.checkpoint
        path = Path(cfg.dir) / f"step_{self.step:07d}"
        meta = {
            "step": self.step,
            "loader": self.loader.state_dict(),
            "recipe": dataclasses.asdict(self.recipe),
        }
        ckpt.save_checkpoint(path, self.model, self.optimizer, meta, keep_last=cfg.keep_last)
        self.logger.info(f"saved checkpoint {path}")
        return path

    def resume(self, load: str) -> None:
        path = ckpt.resolve_load_path(load, self.recipe.checkpoint.dir)
        if path is None:  # 'latest' with nothing saved yet: a fresh start
            return
        meta = ckpt.load_checkpoint(path, self.model, self.optimizer)
        if meta.get("kind") == "train":
            self.step = int(meta["step"])
            self.loader.load_state_dict(meta["loader"])
        self.logger.info(f"loaded {meta.get('kind')} checkpoint {path} at step {self.step}")
