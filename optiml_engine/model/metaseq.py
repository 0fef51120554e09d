"""The metaseq (fairseq) checkpoint format of the released OPT and OPT-IML weights, read one
model-parallel part at a time. docs/convert.md describes the layout; in short:

    <prefix>-model_part-<r>.pt            part r of N tensor-parallel parts (Megatron layout)
    <prefix>-model_part-<r>-shard<k>.pt   FSDP shard k of part r, when not consolidated

Each file is a pickled dict: "model" (tensors), "cfg" (an omegaconf config), "shard_metadata"
(fairscale FSDP) and training state we do not need. With FSDP each wrapped module's parameters
are one flat 1-D `flat_param_0`: the parameters' flattened values in the order of
shard_metadata's `names`/`shapes`/`numels`, split over the FSDP shards, each shard padded at its
end by `padding` elements. Within a part, qkv_proj holds the part's heads as [K; V; Q] (metaseq's
sequence-parallel block, see HF's convert_opt_original_pytorch_checkpoint_to_pytorch.py),
fc1 and embed_tokens their rows, out_proj and fc2 their columns; the rest is replicated.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from optiml_engine.config import ModelConfig, check_field, resolve_model_config
from optiml_engine.errors import OptimlError
from optiml_engine.model.safe_pickle import load_untrusted, plain

PART = re.compile(r"^(?P<prefix>.*)-model_part-(?P<part>\d+)(?:-shard(?P<shard>\d+))?\.pt$")
CORRUPT = "re-download the checkpoint"
NOT_METASEQ = "point --ckpt at a directory of metaseq *-model_part-<r>.pt files (or one prefix)"
# FSDP and activation-checkpoint wrappers that can appear inside saved parameter paths.
_WRAPPERS = ("_fsdp_wrapped_module.", "_fpw_module.", "_checkpoint_wrapped_module.")
# metaseq name -> engine name, outside the decoder layers (which share their names).
RENAMES = {
    "decoder.layer_norm.weight": "decoder.final_layer_norm.weight",
    "decoder.layer_norm.bias": "decoder.final_layer_norm.bias",
    "decoder.project_in_dim.weight": "decoder.project_in.weight",
    "decoder.project_out_dim.weight": "decoder.project_out.weight",
}
# How each tensor is split over the parts: 0 rows, 1 columns, None replicated.
SPLIT_DIM = {
    "self_attn.qkv_proj.weight": 0, "self_attn.qkv_proj.bias": 0,
    "fc1.weight": 0, "fc1.bias": 0,
    "self_attn.out_proj.weight": 1, "fc2.weight": 1,
    "decoder.embed_tokens.weight": 0,
}


def split_dim(name: str) -> int | None:
    return SPLIT_DIM.get(name.split(".", 3)[-1] if ".layers." in name else name)


def find_parts(ckpt) -> tuple[list[list[Path]], str]:
    """[files of part r (its FSDP shards in order)] for r = 0..N-1, and the prefix. `ckpt` is a
    directory holding one checkpoint's parts, that prefix (e.g. DIR/checkpoint_1_4000.pt) or
    one of its part files."""
    ckpt = Path(ckpt)
    directory, want = (ckpt, None) if ckpt.is_dir() else (ckpt.parent, ckpt.name)
    if want is not None and PART.match(want):  # one part's file: its checkpoint
        want = PART.match(want)["prefix"]
    if not directory.is_dir():
        raise OptimlError(f"--ckpt {ckpt}", "not found", NOT_METASEQ)
    found: dict[str, dict[int, dict[int | None, Path]]] = {}
    for file in sorted(directory.iterdir()):
        if "-model_part-" in file.name and "-rank-" in file.name:
            raise OptimlError(str(file), "an MoE expert file: expert checkpoints are not "
                              "supported", "convert a dense OPT checkpoint")
        m = PART.match(file.name)
        if m and (want is None or m["prefix"] == want):
            shard = None if m["shard"] is None else int(m["shard"])
            found.setdefault(m["prefix"], {}).setdefault(int(m["part"]), {})[shard] = file
    if not found:
        raise OptimlError(f"--ckpt {ckpt}", "holds no *-model_part-<r>.pt file", NOT_METASEQ)
    if len(found) > 1:
        raise OptimlError(f"--ckpt {ckpt}", f"holds parts of several checkpoints: "
                          f"{', '.join(sorted(found))}", f"pass one prefix, e.g. --ckpt "
                          f"{directory / sorted(found)[0]}")
    prefix, parts = next(iter(found.items()))
    if sorted(parts) != list(range(len(parts))):
        raise OptimlError(f"--ckpt {ckpt}", f"parts {sorted(parts)} of {prefix} are not "
                          f"0..{len(parts) - 1}", "copy every model_part file")
    out = []
    for r in range(len(parts)):
        shards = parts[r]
        if None in shards and len(shards) > 1 or None not in shards and \
                sorted(shards) != list(range(len(shards))):
            raise OptimlError(f"--ckpt {ckpt}", f"part {r} has shards {sorted(map(str, shards))}",
                              "copy every -shard<k> file of each part (0..K-1), or only the "
                              "consolidated part")
        out.append([shards[k] for k in sorted(shards, key=lambda k: -1 if k is None else k)])
    return out, prefix


def _clean(path: str) -> str:
    for wrapper in _WRAPPERS:
        path = path.replace(wrapper, "")
    return path


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def unflatten(models: list[dict], metas: list[dict]) -> dict:
    """The parameters of FSDP flat shards (one part's shards, in order): each flat parameter's
    shards unpadded, concatenated and split by shard_metadata; then shared parameters and the
    buffers (shard 0's, as fairscale's consolidate_shard_weights does). Mirrors fairscale's
    `local_metadata_dict` layout."""
    out, used = {}, set()
    for index, meta in enumerate(metas[0]["param_metadata"]):
        path = _clean(meta["fsdp_path"])
        for backing, info in meta["params"].items():
            key = _join(path, backing)
            pieces = []
            for model, shard_meta in zip(models, metas, strict=True):
                flat = model[key].reshape(-1)
                pad = int(shard_meta["param_metadata"][index]["params"][backing]["padding"])
                pieces.append(flat[: flat.numel() - pad])
                if meta.get("no_broadcast_optim_state"):
                    break  # not sharded: every shard holds all of it
            used.add(key)
            full = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
            numels = [int(n) for n in info["numels"]]
            if sum(numels) != full.numel():
                raise ValueError(f"{key}: {full.numel()} values unpadded, shard_metadata "
                                 f"names {sum(numels)}")
            for name, shape, value in zip(info["names"], info["shapes"], full.split(numels),
                                          strict=True):
                out[_join(path, _clean(name))] = value.view(tuple(int(s) for s in shape))
        for src, dst in meta.get("shared_param_info") or []:
            out[_clean(dst)] = out[_clean(src)]
    for name in metas[0].get("buffer_names") or []:
        if name in models[0]:
            out[_clean(name)] = models[0][name]
            used.add(name)
    leftover = sorted(set(models[0]) - used)
    if leftover:
        raise ValueError(f"tensors shard_metadata does not describe: {', '.join(leftover[:3])}")
    return out


def part_shapes(files: list[Path]) -> tuple[dict, dict]:
    """(engine name -> full shape within the part, the config as plain dicts), from the part's
    first file alone: shard_metadata's shapes, or the tensors' (nothing is unflattened)."""
    saved = load_untrusted(files[0])
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise OptimlError(str(files[0]), "holds no \"model\" state dict", NOT_METASEQ)
    cfg = {"cfg": plain(saved.get("cfg")), "args": plain(saved.get("args"))}
    meta = saved.get("shard_metadata")
    if not any("flat_param" in k for k in saved["model"]):
        return {RENAMES.get(k, k): tuple(t.shape) for k, t in saved["model"].items()}, cfg
    try:
        shapes = {}
        for module in meta["param_metadata"]:
            for info in module["params"].values():
                for name, shape in zip(info["names"], info["shapes"], strict=True):
                    key = _join(_clean(module["fsdp_path"]), _clean(name))
                    shapes[RENAMES.get(key, key)] = tuple(int(d) for d in shape)
    except (KeyError, TypeError, ValueError) as err:
        raise OptimlError(str(files[0]), f"shard_metadata is malformed ({type(err).__name__}: "
                          f"{err})", CORRUPT) from None
    return shapes, cfg


def read_part(files: list[Path]) -> tuple[dict, dict]:
    """(metaseq-named tensors of one part, its config as plain dicts) from its file(s)."""
    models, metas, cfg = [], [], {}
    for file in files:
        saved = load_untrusted(file)
        if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
            raise OptimlError(str(file), "holds no \"model\" state dict", NOT_METASEQ)
        odd = next((k for k, v in saved["model"].items() if not isinstance(v, torch.Tensor)),
                   None)
        if odd is not None:
            raise OptimlError(f"{file}: model.{odd}", "is not a tensor", CORRUPT)
        models.append(saved["model"])
        metas.append(saved.get("shard_metadata"))
        if not cfg:
            cfg = {"cfg": plain(saved.get("cfg")), "args": plain(saved.get("args"))}
    flat = any("flat_param" in k for k in models[0])
    if not flat:
        if len(files) > 1:
            raise OptimlError(str(files[0]), "FSDP shard files without flat parameters",
                              "consolidate the shards with metaseq first")
        return models[0], cfg
    if not all(isinstance(m, dict) and "param_metadata" in m for m in metas):
        raise OptimlError(str(files[0]), "flat FSDP parameters but no shard_metadata: "
                          "param_metadata", CORRUPT)
    try:
        return unflatten(models, metas), cfg
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise OptimlError(str(files[0]), f"shard_metadata does not match the flat parameters "
                          f"({type(err).__name__}: {err})", CORRUPT) from None


def engine_names(state: dict, where: str) -> dict:
    """One part's tensors under engine names (qkv still [K; V; Q] of the part's heads);
    the version buffers and the tied output projection are dropped, anything else unknown is
    refused."""
    out = {}
    for key, value in state.items():
        if key.endswith(".version") or key == "decoder.output_projection.weight":
            continue
        out[RENAMES.get(key, key)] = value
    tied = state.get("decoder.output_projection.weight")
    embed = out.get("decoder.embed_tokens.weight")
    if tied is not None and (embed is None or not torch.equal(tied, embed)):
        raise OptimlError(where, "decoder.output_projection.weight differs from "
                          "decoder.embed_tokens.weight", "the engine ties them (OPT does): "
                          "this is not an OPT checkpoint")
    known = re.compile(r"decoder\.(layers\.\d+\.(self_attn\.(qkv_proj|out_proj)|fc1|fc2|"
                       r"self_attn_layer_norm|final_layer_norm)\.(weight|bias)|"
                       r"embed_tokens\.weight|embed_positions\.weight|final_layer_norm\."
                       r"(weight|bias)|project_(in|out)\.weight)$")
    unknown = sorted(k for k in out if not known.match(k))
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise OptimlError(where, f"tensors an OPT has no place for: {', '.join(unknown[:3])}"
                          f"{more}", "this is not a metaseq OPT checkpoint")
    return out


def _setting(cfg: dict, key: str):
    for section in ((cfg.get("cfg") or {}).get("model"), cfg.get("args")):
        if isinstance(section, dict) and section.get(key) is not None:
            return section[key]
    return None


def model_config(shapes: dict, n_parts: int, cfg: dict, where: str,
                 num_heads: int | None = None) -> ModelConfig:
    """The ModelConfig of a checkpoint: sizes from part 0's shapes (engine names), heads from
    its config (or `num_heads`); the config's other sizes must agree with the shapes."""
    try:
        embed = shapes["decoder.embed_tokens.weight"]
        positions = shapes["decoder.embed_positions.weight"]
        fc1 = shapes["decoder.layers.0.fc1.weight"]
    except KeyError as err:
        raise OptimlError(where, f"tensor {err.args[0]} missing", NOT_METASEQ) from None
    layers = len({int(k.split(".")[2]) for k in shapes if k.startswith("decoder.layers.")})
    sizes = {"vocab_size": embed[0] * n_parts, "word_embed_proj_dim": embed[1],
             "hidden_size": positions[1], "num_layers": layers,
             "ffn_hidden_size": fc1[0] * n_parts,
             "max_position_embeddings": positions[0] - 2,  # fairseq's padding offset
             "pre_layer_norm": "decoder.final_layer_norm.weight" in shapes}
    for theirs, ours in (("decoder_embed_dim", "hidden_size"), ("decoder_layers", "num_layers"),
                         ("decoder_ffn_embed_dim", "ffn_hidden_size")):
        said = _setting(cfg, theirs)
        if said is not None and said != sizes[ours]:
            raise OptimlError(f"{where}: cfg.model.{theirs}", f"{said!r}, but the weights have "
                              f"{sizes[ours]}", CORRUPT)
    activation = _setting(cfg, "activation_fn")
    if activation is not None and activation != "relu":
        raise OptimlError(f"{where}: cfg.model.activation_fn", f"{activation!r} is not "
                          "supported", "OPT uses relu")
    heads = num_heads if num_heads is not None else _setting(cfg, "decoder_attention_heads")
    if heads is None:
        raise OptimlError(f"{where}: cfg.model.decoder_attention_heads", "missing",
                          "pass --num-heads N")
    fields = {k: check_field(ModelConfig, k, v, k, where) for k, v in sizes.items()}
    fields["num_heads"] = check_field(ModelConfig, "num_heads", heads,
                                      "decoder_attention_heads", where)
    return resolve_model_config(ModelConfig(**fields), where)
