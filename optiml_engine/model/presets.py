"""Published OPT dimensions (Zhang et al. 2022, table 1) and the resolution of a model config."""

from __future__ import annotations

from optiml_engine.errors import OptimlError

# name: (layers, hidden, heads). Every OPT has a 4x ReLU FFN, 2048 positions and 50272 tokens.
OPT_PRESETS: dict[str, tuple[int, int, int]] = {
    "125m": (12, 768, 12),
    "350m": (24, 1024, 16),
    "1.3b": (24, 2048, 32),
    "2.7b": (32, 2560, 32),
    "6.7b": (32, 4096, 32),
    "13b": (40, 5120, 40),
    "30b": (48, 7168, 56),
    "66b": (64, 9216, 72),
    "175b": (96, 12288, 96),
}


def resolve_model_config(model, where: str = "recipe"):
    """Fill unset fields of a `config.ModelConfig` from its preset or OPT's defaults, in place."""
    if model.preset is not None:
        layers, hidden, heads = OPT_PRESETS[model.preset]
        preset = {"num_layers": layers, "hidden_size": hidden, "num_heads": heads}
        if model.preset == "350m":  # the one post-LN OPT, with a 512-d embedding projected in/out
            preset.update(word_embed_proj_dim=512, pre_layer_norm=False)
        for key, value in preset.items():
            if getattr(model, key) is None:
                setattr(model, key, value)
    for key in ("hidden_size", "num_layers", "num_heads"):
        if getattr(model, key) is None:
            raise OptimlError(f"{where}: model.{key}", "is not set",
                              "set it, or choose model.preset (125m ... 175b)")
    defaults = {
        "vocab_size": 50272,
        "ffn_hidden_size": 4 * model.hidden_size,
        "max_position_embeddings": 2048,
        "word_embed_proj_dim": model.hidden_size,
        "pre_layer_norm": True,
    }
    for key, value in defaults.items():
        if getattr(model, key) is None:
            setattr(model, key, value)
    if model.hidden_size % model.num_heads:
        raise OptimlError(f"{where}: model.num_heads",
                          f"hidden_size {model.hidden_size} is not divisible by {model.num_heads}",
                          "choose a divisor of model.hidden_size")
    return model
