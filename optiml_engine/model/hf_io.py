"""Hugging Face OPT directories <-> engine models.

Weights load without executing pickles: safetensors, or `torch.load(weights_only=True)` for
`pytorch_model.bin`. The only renaming is the fused head-major `qkv_proj` (see model/opt.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from optiml_engine.config import ModelConfig
from optiml_engine.errors import OptimlError

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
    fields = {ours: hf[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in hf}
    return ModelConfig(**fields)


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


def read_hf_weights(path: Path) -> dict:
    """All tensors of a HF directory: safetensors (single or sharded) or a weights-only .bin."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(path / f).items()}
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise OptimlError(str(path), "no model.safetensors or pytorch_model.bin",
                      "point at a Hugging Face OPT directory")


def load_hf(cls, path):
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise OptimlError(str(config_file), "not found", "point at a Hugging Face OPT directory")
    cfg = config_from_hf(json.loads(config_file.read_text()), str(config_file))
    with torch.device("meta"):
        model = cls(cfg)
    state = hf_to_engine_state(read_hf_weights(path), model.config.num_heads)
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise OptimlError(str(path), f"weights missing: {sorted(missing)[:3]}",
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
