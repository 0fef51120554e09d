"""Checkpoint conversion: Hugging Face OPT directories <-> engine checkpoints, and metaseq
(the released OPT / OPT-IML weights) -> engine checkpoints.

Both directions refuse to write into a non-empty directory that is not their own kind of
output (an engine checkpoint, an HF directory) unless asked to overwrite it: a typo in --out
must never delete a user's files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from optiml_engine.config import ModelConfig
from optiml_engine.distributed import checkpoint as ckpt
from optiml_engine.errors import OptimlError
from optiml_engine.model.opt import OPTForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


def check_output(out: Path, own_marker: str, command: str, overwrite: bool) -> None:
    """Refuse a non-empty `out` holding no `own_marker` file (not our output) unless overwrite."""
    if out.exists() and not out.is_dir():
        raise OptimlError(f"{command} --out {out}", "is a file", "choose a directory")
    if overwrite or not out.is_dir() or not any(out.iterdir()) or (out / own_marker).is_file():
        return
    raise OptimlError(f"{command} --out {out}", "is a non-empty directory that is not a "
                      "converted checkpoint", "choose an empty or new directory, or pass "
                      "--overwrite to replace what it holds")


def hf_to_engine(hf_dir, out, tp: int = 1, pp: int = 1, overwrite: bool = False) -> Path:
    """Every rank reads only its slices (under torchrun, tp * pp ranks), so a 175B model is
    never held in one process; the checkpoint written is the same for every layout."""
    from optiml_engine.model.hf_shards import hf_to_engine_sharded

    check_output(Path(out), ckpt.META, "optiml convert hf2engine", overwrite)
    return hf_to_engine_sharded(hf_dir, out, tp, pp)


def metaseq_to_engine(ckpt_dir, out, tp: int = 1, pp: int = 1, overwrite: bool = False,
                      num_heads: int | None = None) -> Path:
    """The released metaseq weights (model/metaseq.py); read like hf2engine: each of tp * pp
    ranks reads only its parts (model/metaseq_convert.py)."""
    from optiml_engine.model.metaseq_convert import metaseq_to_engine_sharded

    check_output(Path(out), ckpt.META, "optiml convert metaseq2engine", overwrite)
    return metaseq_to_engine_sharded(ckpt_dir, out, tp, pp, num_heads)


def resolve_checkpoint(path, verify: bool = True) -> Path:
    """A step_* directory, or a checkpoint.dir: its newest good checkpoint."""
    path = Path(path)
    if not ckpt.is_complete(path):
        path = ckpt.latest_checkpoint(path, verify=verify) or path
    return path


def load_engine_model(path, verify: bool = True) -> OPTForCausalLM:
    """A model from an engine checkpoint (a step_* directory, or a checkpoint.dir: its latest);
    verify: check its files against their checksums first."""
    path = resolve_checkpoint(path, verify)
    meta = ckpt.read_meta(path)
    model = OPTForCausalLM(ModelConfig(**meta["model_config"]))
    ckpt.load_weights(model, path, verify)
    return model


def engine_to_hf(ckpt_path, out, overwrite: bool = False) -> Path:
    """A complete HF directory: config, weights, and the run's tokenizer files when it had
    them (data.tokenizer pointing at an HF tokenizer)."""
    out = Path(out)
    check_output(out, "config.json", "optiml convert engine2hf", overwrite)
    if overwrite and out.is_dir():
        shutil.rmtree(out)
    path = resolve_checkpoint(ckpt_path)
    meta = ckpt.read_meta(path)
    with torch.no_grad():
        load_engine_model(path).save_hf(out)
    spec = ((meta.get("recipe") or {}).get("data") or {}).get("tokenizer")
    source = Path(spec).parent if spec and Path(spec).is_file() else Path(spec or ".")
    copied = []
    if spec and spec != "byte" and source.is_dir():
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, out / name)
                copied.append(name)
    tokenizer = f"tokenizer files {', '.join(copied)}" if copied else \
        f"no tokenizer files (the run's tokenizer: {spec or 'unknown'})"
    print(f"exported {path} (step {meta.get('step', '?')}) with {tokenizer}", file=sys.stderr)
    return out
