"""Which checkpoint a run resumes, and whether it may: `latest` resumes only a checkpoint of a
compatible run (same model shape, same data, same seed); an explicit path is the user's choice."""

from __future__ import annotations

import dataclasses
import json

SHAPE = ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_hidden_size",
         "max_position_embeddings", "word_embed_proj_dim", "pre_layer_norm")


def incompatibility(meta: dict, recipe, model_config) -> str | None:
    """What differs between the run that saved `meta` and this one (None: nothing that
    matters), as 'key=saved (this recipe: value)'."""
    saved_model = meta.get("model_config") or {}
    ours = dataclasses.asdict(model_config)
    for key in SHAPE:
        if key in saved_model and key in ours and saved_model[key] != ours[key]:
            return f"model.{key}={saved_model[key]} (this recipe: {ours[key]})"
    saved = meta.get("recipe") or {}
    current = json.loads(json.dumps(recipe.to_dict()))  # as saved: tuples become lists
    for section, keys in (("data", None), ("train", ("seed",))):
        old, new = saved.get(section) or {}, current[section]
        for key in keys or sorted(new):
            if key in old and old[key] != new[key]:
                return f"{section}.{key}={old[key]!r} (this recipe: {new[key]!r})"
    return None
