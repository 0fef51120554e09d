"""Write a tiny OPT in metaseq's released format from a Hugging Face OPT's weights, by hand and
independently of optiml_engine: Megatron parts (qkv as [K; V; Q] of each part's heads, fc1 and
embed_tokens by rows, out_proj and fc2 by columns), fairseq names, each FSDP-wrapped module's
parameters flattened into `flat_param_0` with fairscale's shard_metadata (names, shapes,
numels, padding), and an omegaconf-like config pickled from stand-in classes registered under
omegaconf's module names while saving (omegaconf itself is not installed)."""

from __future__ import annotations

import collections
import contextlib
import sys
import types
import typing
from pathlib import Path

import torch

HIDDEN, HEADS, LAYERS, FFN, VOCAB, POSITIONS = 32, 4, 2, 64, 96, 32


def hf_reference():
    """A random HF OPT with non-trivial LayerNorms and biases (a mapping mistake cannot hide
    behind ones and zeros)."""
    import transformers

    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=FFN,
        num_attention_heads=HEADS, max_position_embeddings=POSITIONS, dropout=0.0,
        attention_dropout=0.0)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def megatron_part(sd: dict, r: int, n: int) -> dict:
    """Part r of n of HF state dict `sd`, under metaseq's names."""
    def rows(t):
        return t.chunk(n, 0)[r]

    def cols(t):
        return t.chunk(n, 1)[r]

    out = {
        "decoder.embed_tokens.weight": rows(sd["model.decoder.embed_tokens.weight"]),
        "decoder.embed_positions.weight": sd["model.decoder.embed_positions.weight"],
        "decoder.layer_norm.weight": sd["model.decoder.final_layer_norm.weight"],
        "decoder.layer_norm.bias": sd["model.decoder.final_layer_norm.bias"],
    }
    for i in range(LAYERS):
        hf, ms = f"model.decoder.layers.{i}.", f"decoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = (sd[f"{hf}self_attn.{x}_proj.{kind}"] for x in "qkv")
            out[f"{ms}self_attn.qkv_proj.{kind}"] = torch.cat([rows(k), rows(v), rows(q)])
            out[f"{ms}fc1.{kind}"] = rows(sd[f"{hf}fc1.{kind}"])
            for norm in ("self_attn_layer_norm", "final_layer_norm"):
                out[f"{ms}{norm}.{kind}"] = sd[f"{hf}{norm}.{kind}"]
        out[f"{ms}self_attn.out_proj.weight"] = cols(sd[f"{hf}self_attn.out_proj.weight"])
        out[f"{ms}fc2.weight"] = cols(sd[f"{hf}fc2.weight"])
        out[f"{ms}self_attn.out_proj.bias"] = sd[f"{hf}self_attn.out_proj.bias"]
        out[f"{ms}fc2.bias"] = sd[f"{hf}fc2.bias"]
    return {k: v.clone() for k, v in out.items()}


def fsdp_shards(part: dict, world: int, extra_pad: int) -> list[tuple[dict, dict]]:
    """fairscale's flat sharding of one part over `world` FSDP ranks: (state dict, shard_metadata)
    per rank. The root module flattens the embeddings and the final LayerNorm, each layer its own
    parameters (in an order unlike the engine's); every flat parameter is chunked over the
    ranks, each chunk padded with NaN to the first's size plus `extra_pad`."""
    groups = {"": [k for k in part if not k.startswith("decoder.layers.")]}
    for i in range(LAYERS):
        prefix = f"decoder.layers.{i}."
        groups[f"decoder.layers.{i}"] = sorted(k[len(prefix):] for k in part
                                               if k.startswith(prefix))[::-1]
    states = [{"decoder.version": torch.tensor([3.0])} for _ in range(world)]
    metas = [{"param_metadata": [], "buffer_names": ["decoder.version"]} for _ in range(world)]
    for path, names in groups.items():
        full = [part[f"{path}.{n}" if path else n] for n in names]
        flat = torch.cat([t.reshape(-1) for t in full])
        chunks = flat.chunk(world)
        size = chunks[0].numel() + extra_pad
        for rank in range(world):
            chunk = chunks[rank] if rank < len(chunks) else flat[:0]
            pad = size - chunk.numel()
            key = f"{path}.flat_param_0" if path else "flat_param_0"
            states[rank][key] = torch.cat([chunk, torch.full((pad,), float("nan"))])
            metas[rank]["param_metadata"].append({
                "fsdp_path": path, "no_broadcast_optim_state": False,
                "shared_param_info": [("decoder.embed_tokens.weight",
                                       "decoder.output_projection.weight")] if not path else [],
                "params": {"flat_param_0": {"names": names, "shapes": [t.shape for t in full],
                                            "numels": [t.numel() for t in full],
                                            "padding": pad}}})
    return list(zip(states, metas, strict=True))


class _Node:
    def __getstate__(self):
        return dict(self.__dict__)


def _stand_ins() -> dict[str, dict[str, type]]:
    return {"omegaconf.dictconfig": {"DictConfig": type("DictConfig", (_Node,), {})},
            "omegaconf.nodes": {"AnyNode": type("AnyNode", (_Node,), {})},
            "omegaconf.base": {"ContainerMetadata": type("ContainerMetadata", (_Node,), {}),
                               "Metadata": type("Metadata", (_Node,), {})}}


@contextlib.contextmanager
def fake_omegaconf():
    """Classes importable as omegaconf.* while a checkpoint is pickled, then gone again."""
    classes = _stand_ins()
    names = ["omegaconf", *classes]
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules["omegaconf"] = types.ModuleType("omegaconf")
    for module, members in classes.items():
        mod = types.ModuleType(module)
        for name, cls in members.items():
            cls.__module__, cls.__qualname__ = module, name
            setattr(mod, name, cls)
        sys.modules[module] = mod
    try:
        yield {name: cls for members in classes.values() for name, cls in members.items()}
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def omegaconf_like(c: dict, values: dict):
    """A DictConfig as omegaconf pickles it: `_content` of nodes holding `_val`, metadata naming
    typing.Any and dict."""
    def container(content):
        node = c["DictConfig"]()
        node._metadata = c["ContainerMetadata"]()
        node._metadata.__dict__.update(ref_type=typing.Any, object_type=dict, key=None,
                                       optional=True, flags={})
        node._parent, node._content = None, content
        return node

    def leaf(value):
        node = c["AnyNode"]()
        node._metadata = c["Metadata"]()
        node._metadata.__dict__.update(ref_type=typing.Any, object_type=None, optional=True)
        node._val, node._parent = value, None
        return node

    return container({"model": container({k: leaf(v) for k, v in values.items()}),
                      "task": container({"_name": leaf("streaming_language_modeling")})})


MODEL_CFG = {"_name": "transformer_lm_megatron", "decoder_embed_dim": HIDDEN,
             "decoder_layers": LAYERS, "decoder_attention_heads": HEADS,
             "decoder_ffn_embed_dim": FFN, "activation_fn": "relu",
             "share_decoder_input_output_embed": True}


def write_metaseq(directory: Path, hf_state: dict, n_parts: int = 2, fsdp_world: int = 1,
                  extra_pad: int = 3, prefix: str = "checkpoint_1_4000.pt",
                  model_cfg: dict | None = None) -> Path:
    """`prefix-model_part-<r>.pt` (fsdp_world 1) or `...-model_part-<r>-shard<k>.pt` files."""
    directory.mkdir(parents=True, exist_ok=True)
    with fake_omegaconf() as classes:
        for r in range(n_parts):
            shards = fsdp_shards(megatron_part(hf_state, r, n_parts), fsdp_world, extra_pad)
            for k, (state, meta) in enumerate(shards):
                name = f"{prefix}-model_part-{r}" + (f"-shard{k}" if fsdp_world > 1 else "")
                torch.save({
                    "model": state, "shard_metadata": meta,
                    "cfg": omegaconf_like(classes, model_cfg or MODEL_CFG), "args": None,
                    "optimizer_history": [{"criterion_name": "vocab_parallel_cross_entropy",
                                           "optimizer_name": "MemoryEfficientFP16Optimizer",
                                           "lr_scheduler_state": {"best": None},
                                           "num_updates": 4000}],
                    "extra_state": {"train_iterator": {"epoch": 1},
                                    "meters": collections.defaultdict(list, {"loss": [1.5]})},
                }, directory / f"{name}.pt")
    return directory


def convert_worker(rank: int, src: str, out: str, tp: int, pp: int) -> None:
    """One rank of a torchrun-like metaseq2engine; records which parts it read."""
    import re

    from optiml_engine.model import metaseq_convert

    reads, read_part = [], metaseq_convert.read_part

    def recording(files):
        reads.append(re.search(r"model_part-(\d+)", str(files[0]))[1])
        return read_part(files)

    metaseq_convert.read_part = recording
    metaseq_convert.metaseq_to_engine_sharded(src, out, tp, pp)
    (Path(out) / f"reads-{rank}.txt").write_text(" ".join(reads))
