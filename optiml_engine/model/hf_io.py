"""Hugging Face OPT directories <-> engine models.

Weights load without executing pickles: safetensors, or `torch.load(weights_only=True)` for
`pytorch_model.bin` (either one file or shards named by its `.index.json`). The only renaming
is the fused head-major `qkv_proj` (see model/opt.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from optiml_engine.config import ModelConfig, check_field, resolve_model_config
from optiml_engine.errors import OptimlError, read_json

NOT_HF = "point at a Hugging Face OPT directory"
CORRUPT = "re-download or re-export the checkpoint"

# HF config key -> ModelConfig field
_CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "ffn_dim": "ffn_hidden_size",
    "max_position_embeddings": "max_position_embeddings",
    "word_embed_proj_dim": "word_embed_proj_dim",
    "do_layer_norm_before": "pre_layer_norm",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "init_std": "init_std",
}


def config_from_hf(hf: dict, where: str) -> ModelConfig:
    """The ModelConfig of an HF `config.json`'s contents; every value is checked (type, range,
    the engine's size bounds) as a recipe's would be, and errors name the HF key."""
    if not isinstance(hf, dict):
        raise OptimlError(where, f"expected a JSON object of OPT settings, got "
                          f"{type(hf).__name__}", NOT_HF)
    if hf.get("model_type", "opt") != "opt":
        raise OptimlError(where, f"model_type is {hf.get('model_type')!r}, not 'opt'",
                          "point at an OPT checkpoint")
    unsupported = {
        "activation_function": ("relu", hf.get("activation_function", "relu")),
        "enable_bias": (True, hf.get("enable_bias", True)),
        "_remove_final_layer_norm": (False, hf.get("_remove_final_layer_norm", False)),
        "layer_norm_elementwise_affine": (True, hf.get("layer_norm_elementwise_affine", True)),
    }
    for key, (want, got) in unsupported.items():
        if want != got:
            raise OptimlError(f"{where}: {key}", f"{got!r} is not supported", f"expected {want!r}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        if key not in hf:
            raise OptimlError(f"{where}: {key}", "missing", NOT_HF)
    fields = {ours: check_field(ModelConfig, ours, hf[theirs], theirs, where)
              for theirs, ours in _CONFIG_KEYS.items() if theirs in hf}
    return ModelConfig(**fields)


def read_hf_config(path) -> ModelConfig:
    """The ModelConfig of the HF OPT directory `path` (its config.json), checked."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise OptimlError(str(config_file), "not found", NOT_HF)
    cfg = config_from_hf(read_json(config_file, CORRUPT), str(config_file))
    return resolve_model_config(cfg, str(config_file))


def config_to_hf(cfg: ModelConfig) -> dict:
    hf = {theirs: getattr(cfg, ours) for theirs, ours in _CONFIG_KEYS.items()}
    hf.update(
        model_type="opt", architectures=["OPTForCausalLM"], activation_function="relu",
        activation_dropout=0.0, layerdrop=0.0, enable_bias=True, _remove_final_layer_norm=False,
        layer_norm_elementwise_affine=True, bos_token_id=2, eos_token_id=2, pad_token_id=1,
        tie_word_embeddings=True, use_cache=True, torch_dtype="float32",
    )
    return hf


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[E, ...] x 3 -> [3E, ...] laid out head-major: [q_0; k_0; v_0; q_1; ...]."""
    parts = [t.reshape(num_heads, -1, *t.shape[1:]) for t in (q, k, v)]
    return torch.stack(parts, dim=1).reshape(-1, *q.shape[1:])


def split_qkv(qkv: torch.Tensor, num_heads: int):
    parts = qkv.reshape(num_heads, 3, -1, *qkv.shape[1:]).unbind(1)
    return [p.reshape(-1, *qkv.shape[1:]) for p in parts]


def hf_to_engine_state(sd: dict, num_heads: int) -> dict:
    out = {}
    for key, value in sd.items():
        key = key.removeprefix("model.")
        if key == "lm_head.weight":
            continue  # tied to decoder.embed_tokens.weight
        out[key] = value
    for key in [k for k in out if ".self_attn.q_proj." in k]:
        kind = key.rsplit(".", 1)[1]
        prefix = key.split(".self_attn.")[0] + ".self_attn."
        q, k, v = (out.pop(f"{prefix}{p}_proj.{kind}") for p in "qkv")
        out[f"{prefix}qkv_proj.{kind}"] = fuse_qkv(q, k, v, num_heads)
    return out


def engine_to_hf_state(sd: dict, num_heads: int) -> dict:
    out = {}
    for key, value in sd.items():
        if ".qkv_proj." in key:
            prefix, kind = key.split("qkv_proj.")
            for name, part in zip("qkv", split_qkv(value, num_heads), strict=True):
                out[f"model.{prefix}{name}_proj.{kind}"] = part.contiguous()
        else:
            out[f"model.{key}"] = value.contiguous()
    return out


def _indexed_files(path: Path, single: str, index_name: str) -> list[Path]:
    """[path/single], or the files `path/index_name`'s weight_map names (checked to exist),
    or [] when there is neither."""
    index = path / index_name
    if (path / single).is_file():
        return [path / single]
    if not index.is_file():
        return []
    weight_map = read_json(index, CORRUPT)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(f, str) for f in weight_map.values()):
        raise OptimlError(f"{index}: weight_map", "missing or not a {tensor: file} mapping",
                          CORRUPT)
    files = [path / f for f in sorted(set(weight_map.values()))]
    for file in files:
        if not file.is_file():
            raise OptimlError(str(file), f"not found (named by {index_name})", CORRUPT)
    return files


def safetensors_shards(path: Path) -> list[Path]:
    """The safetensors files of an HF directory (one, or those its index names)."""
    return _indexed_files(path, "model.safetensors", "model.safetensors.index.json")


def bin_shards(path: Path) -> list[Path]:
    """The pytorch_model.bin files of an HF directory (one, or those its index names)."""
    return _indexed_files(path, "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_safetensors(file: Path) -> dict:
    """All tensors of one safetensors file; a truncated or garbage file is one OptimlError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except (SafetensorError, OSError) as err:
        raise OptimlError(str(file), f"not a readable safetensors file ({err})",
                          CORRUPT) from None


def load_bin(file: Path, mmap: bool = False) -> dict:
    """A `pytorch_model.bin` read with `weights_only=True`: a pickle holding anything but
    tensors is refused, never executed; a truncated file is one OptimlError."""
    import pickle

    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln),
                   lines[0] if lines else "weights_only")  # torch's line naming the object
        raise OptimlError(str(file), f"refused: the pickle holds more than tensors "
                          f"({why.rstrip('.')})",
                          "load only trusted weights; convert them to safetensors") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        text = str(err).strip()
        first = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
        raise OptimlError(str(file), f"not a readable PyTorch file ({first})", CORRUPT) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise OptimlError(str(file), "not a state dict of tensors", CORRUPT)
    return state


def read_hf_weights(path: Path) -> dict:
    """All tensors of a HF directory: safetensors or weights-only .bin files, single or sharded
    (model.safetensors.index.json, pytorch_model.bin.index.json)."""
    files = safetensors_shards(path)
    if files:
        return {k: v for f in files for k, v in load_safetensors(f).items()}
    files = bin_shards(path)
    if files:
        return {k: v for f in files for k, v in load_bin(f).items()}
    raise OptimlError(str(path), "no model.safetensors or pytorch_model.bin", NOT_HF)


def load_hf(cls, path):
    path = Path(path)
    cfg = read_hf_config(path)
    with torch.device("meta"):
        model = cls(cfg)
    try:
        state = hf_to_engine_state(read_hf_weights(path), model.config.num_heads)
    except (KeyError, RuntimeError) as err:  # a q/k/v projection missing or of another size
        raise OptimlError(str(path), f"weights do not match config.json ({err})",
                          "the checkpoint does not match its config.json") from None
    expected = model.state_dict()
    missing = set(expected) - set(state)
    if missing:
        raise OptimlError(str(path), f"weights missing: {sorted(missing)[:3]}",
                          "the checkpoint does not match its config.json")
    for name, want in expected.items():
        if tuple(state[name].shape) != tuple(want.shape):
            raise OptimlError(str(path), f"weight {name} has shape {tuple(state[name].shape)}, "
                              f"config.json implies {tuple(want.shape)}",
                              "the checkpoint does not match its config.json")
    model.load_state_dict(state, strict=False, assign=True)
    return model.float()


def save_hf(model, path) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2))
    state = engine_to_hf_state(model.state_dict(), model.config.num_heads)
    save_file({k: v.detach().cpu() for k, v in state.items()}, path / "model.safetensors",
              metadata={"format": "pt"})
