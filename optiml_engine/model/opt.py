"""The OPT decoder (Zhang et al. 2022) on packed sequences.

Inputs are packed: a row holds several examples, `position_ids` restart at 0 for each one and
`doc_ids` say which example a token belongs to, so attention never crosses an example boundary.
Parameter names follow Hugging Face's OPT (minus its `model.` prefix), except that q, k and v are
one fused `qkv_proj` laid out head-major (rows [q_h; k_h; v_h] for each head h): a contiguous
slice of its rows then holds whole heads, which is what a column-parallel shard needs. The model
knows nothing about parallelism: model/parallelize.py swaps its layers for sharded ones and keeps
a pipeline stage's part of it, attention infers the number of local heads from the projection's
output width, and `hidden_states` runs whatever part is left (one forward for every stage).
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from optiml_engine.kernels.attention import attention
from optiml_engine.kernels.lm_loss import lm_loss_sum
from optiml_engine.model.kv_cache import KVCache

POSITION_OFFSET = 2  # OPT's learned positions start at index 2 (a fairseq legacy)


def initial_value(name: str, shape, init_seed: int, std: float) -> torch.Tensor:
    """OPT's initialisation of the full parameter `name` (fp32, CPU): normal(0, std) weights,
    zero biases, unit LayerNorm scales. Each tensor draws from its own generator seeded by
    (init_seed, name), so one tensor can be built alone (a parallel rank building only its
    shards) and still equal the one-process model's."""
    if name.endswith("layer_norm.weight"):
        return torch.ones(shape, device="cpu")
    if name.endswith(".bias"):
        return torch.zeros(shape, device="cpu")
    g = torch.Generator().manual_seed((init_seed + zlib.crc32(name.encode())) % 2**63)
    return torch.empty(shape, device="cpu").normal_(0.0, std, generator=g)


def default_position_ids(input_ids, kv_cache: KVCache | None = None) -> torch.Tensor:
    """One example per row: positions 0, 1, ... continuing after what the cache already holds."""
    start = kv_cache.length if kv_cache is not None else 0
    return torch.arange(start, start + input_ids.shape[1],
                        device=input_ids.device).expand_as(input_ids)


class OPTAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.qkv_proj = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = cfg.attention_dropout

    def forward(self, x, doc_ids, kv_doc_ids, kv_cache: KVCache | None, layer: int):
        qkv = self.qkv_proj(x)  # its shape, not x's: under sequence parallelism x is a shard
        batch, seq = qkv.shape[:2]
        q, k, v = qkv.view(batch, seq, -1, 3, self.head_dim).unbind(3)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)
        out = attention(q, k, v, doc_ids, kv_doc_ids,
                        dropout_p=self.dropout if self.training else 0.0,
                        scale=self.head_dim**-0.5)
        return self.out_proj(out.reshape(batch, seq, -1))


class OPTDecoderLayer(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        self.layer = layer
        self.pre_layer_norm = cfg.pre_layer_norm
        self.self_attn = OPTAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size)
        self.fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h, doc_ids=None, kv_doc_ids=None, kv_cache=None):
        pre = self.pre_layer_norm
        x = self.self_attn_layer_norm(h) if pre else h
        h = h + self.dropout(self.self_attn(x, doc_ids, kv_doc_ids, kv_cache, self.layer))
        if not pre:
            h = self.self_attn_layer_norm(h)
        x = self.final_layer_norm(h) if pre else h
        h = h + self.dropout(self.fc2(F.relu(self.fc1(x))))
        if not pre:
            h = self.final_layer_norm(h)
        return h


class OPTDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        embed_dim = cfg.word_embed_proj_dim
        self.embed_tokens = nn.Embedding(cfg.vocab_size, embed_dim, padding_idx=1)
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings + POSITION_OFFSET,
                                            cfg.hidden_size)
        projected = embed_dim != cfg.hidden_size
        self.project_in = nn.Linear(embed_dim, cfg.hidden_size, bias=False) if projected else None
        self.project_out = nn.Linear(cfg.hidden_size, embed_dim, bias=False) if projected else None
        # Post-LN OPT (350M) has no final LayerNorm: each block already ends with one.
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size) if cfg.pre_layer_norm else None
        self.layers = nn.ModuleList(OPTDecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.dropout = nn.Dropout(cfg.dropout)
        # Which ends of the model this (pipeline stage's) decoder holds: the whole model has both.
        self.has_embed = self.has_head = True

    def layer_list(self) -> list[OPTDecoderLayer]:
        layers = self.layers
        return list(layers.values()) if isinstance(layers, nn.ModuleDict) else list(layers)

    def embed(self, input_ids, position_ids):
        h = self.embed_tokens(input_ids)
        if self.project_in is not None:
            h = self.project_in(h)
        return self.dropout(h + self.embed_positions(position_ids + POSITION_OFFSET))

    def head(self, h):
        if self.final_layer_norm is not None:
            h = self.final_layer_norm(h)
        if self.project_out is not None:
            h = self.project_out(h)
        return h


class OPTForCausalLM(nn.Module):
    """OPT with the output layer tied to the input embedding."""

    def __init__(self, cfg):
        super().__init__()
        from optiml_engine.config import resolve_model_config

        self.config = resolve_model_config(cfg)
        # One draw from the global RNG seeds every tensor (see initial_value); the layers'
        # own default init runs on a forked RNG, so building on any device (meta included)
        # leaves the global RNG in the same state.
        self.init_seed = int(torch.randint(0, 2**62, (1,), device="cpu"))
        with torch.random.fork_rng(devices=[]):
            self.decoder = OPTDecoder(self.config)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """OPT's initialisation (`initial_value`); parameters on the meta device are left for
        `optiml_engine.model.meta_init` to materialise shard by shard."""
        for name, p in self.named_parameters():
            if not p.is_meta:
                p.copy_(initial_value(name, p.shape, self.init_seed, self.config.init_std))

    @property
    def output_weight(self) -> torch.Tensor:
        return self.decoder.embed_tokens.weight

    def hidden_states(self, inputs, position_ids=None, doc_ids=None, kv_cache=None, *,
                      layers=None, embed=None, head=None, run_layer=None, kv_doc_ids=None):
        """This model's (or pipeline stage's) forward without the output projection.

        inputs: token ids [B, S] where the stage embeds, else the previous stage's activation
        [B, S, H]. layers: the layers to run (default: all this stage holds; an interleaved
        chunk passes its own); embed / head default to the ends the decoder holds. run_layer(
        layer, h, doc_ids, kv_doc_ids, kv_cache) replaces the plain call (recomputation).
        kv_doc_ids: the cached keys' document ids, when a caller running several chunks of one
        step has already extended the cache's (it must be extended once per step).
        Returns [B, S, word_embed_proj_dim] after the head, else the last layer's activation.
        """
        dec = self.decoder
        embed = dec.has_embed if embed is None else embed
        head = dec.has_head if head is None else head
        if kv_doc_ids is None:
            kv_doc_ids = kv_cache.extend_doc_ids(doc_ids) if kv_cache is not None else doc_ids
        if embed:
            if position_ids is None:
                position_ids = default_position_ids(inputs, kv_cache)
            h = dec.embed(inputs, position_ids)
        else:
            h = inputs
        for layer in dec.layer_list() if layers is None else layers:
            if run_layer is None:
                h = layer(h, doc_ids, kv_doc_ids, kv_cache)
            else:
                h = run_layer(layer, h, doc_ids, kv_doc_ids, kv_cache)
        return dec.head(h) if head else h

    def forward(self, input_ids, position_ids=None, doc_ids=None, kv_cache=None):
        """Logits [B, S, vocab]."""
        h = self.hidden_states(input_ids, position_ids, doc_ids, kv_cache)
        return F.linear(h, self.output_weight)

    def loss_sum(self, input_ids, position_ids, doc_ids, labels, loss_mask, chunk_tokens=0):
        """fp32 sum of the cross-entropy over positions where loss_mask is set (one process;
        the engine runs the same `lm_loss_sum` with its tensor-parallel group's reductions)."""
        h = self.hidden_states(input_ids, position_ids, doc_ids)
        return lm_loss_sum(h, self.output_weight, labels, loss_mask, chunk_tokens)

    @classmethod
    def from_hf(cls, path) -> OPTForCausalLM:
        """Load a local Hugging Face OPT directory (safetensors or a weights-only .bin)."""
        from optiml_engine.model.hf_io import load_hf

        return load_hf(cls, path)

    def save_hf(self, path) -> None:
        """Write a directory that `transformers.OPTForCausalLM.from_pretrained` loads."""
        from optiml_engine.model.hf_io import save_hf

        save_hf(self, path)
