"""Checkpoint conversion between Hugging Face OPT directories and engine checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from optiml_engine.config import ModelConfig
from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.model.opt import OPTForCausalLM


def hf_to_engine(hf_dir, out, tp: int = 1, pp: int = 1) -> Path:
    """One process writes the whole model; with tp/pp > 1 (under torchrun, tp * pp ranks) each
    rank reads only its slices, so a 175B model is never held in one process."""
    if tp > 1 or pp > 1:
        from optiml_engine.model.hf_shards import hf_to_engine_sharded

        return hf_to_engine_sharded(hf_dir, out, tp, pp)
    model = OPTForCausalLM.from_hf(hf_dir)
    return ckpt.save_weights(Path(out), model, {"source": str(hf_dir)})


def load_engine_model(path) -> OPTForCausalLM:
    """A model from an engine checkpoint (a step_* directory, or a checkpoint.dir: its latest)."""
    path = Path(path)
    if not ckpt.is_complete(path):
        path = ckpt.latest_checkpoint(path) or path
    meta = ckpt.read_meta(path)
    model = OPTForCausalLM(ModelConfig(**meta["model_config"]))
    ckpt.load_weights(model, path)
    return model


def engine_to_hf(ckpt_path, out) -> Path:
    with torch.no_grad():
        load_engine_model(ckpt_path).save_hf(out)
    return Path(out)
