"""Checkpoint conversion between Hugging Face OPT directories and engine checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from optiml_engine.config import ModelConfig
from optiml_engine.errors import OptimlError
from optiml_engine.model.opt import OPTForCausalLM
from optiml_engine.training import checkpoint as ckpt


def hf_to_engine(hf_dir, out, tp: int = 1, pp: int = 1) -> Path:
    if tp != 1 or pp != 1:
        raise OptimlError("optiml convert hf2engine: --tp/--pp",
                          "sharded conversion is not available yet",
                          "convert with --tp 1 --pp 1; training reshards on load")
    model = OPTForCausalLM.from_hf(hf_dir)
    return ckpt.save_checkpoint(Path(out), model, meta={"step": 0, "source": str(hf_dir)})


def load_engine_model(path) -> OPTForCausalLM:
    """A model from an engine checkpoint (a step_* directory, or a checkpoint.dir: its latest)."""
    path = Path(path)
    if not ckpt.is_complete(path):
        path = ckpt.latest_checkpoint(path) or path
    meta = ckpt.read_meta(path)
    model = OPTForCausalLM(ModelConfig(**meta["model_config"]))
    ckpt.load_checkpoint(path, model)
    return model


def engine_to_hf(ckpt_path, out) -> Path:
    with torch.no_grad():
        load_engine_model(ckpt_path).save_hf(out)
    return Path(out)
