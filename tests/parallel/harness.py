"""Shared pieces of the multi-process tests: a tiny OPT, synthetic packed batches, the
single-process reference loop (the plain model + torch.optim.AdamW + clip_grad_norm_, independent
of the engine) and a spawner of gloo process groups."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from optiml_engine.config import ModelConfig, OptimConfig, ParallelConfig, PrecisionConfig
from optiml_engine.model import OPTForCausalLM

SEED = 1234
SEQ = 16
VOCAB = 64


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_layers=4, num_heads=4, ffn_hidden_size=64,
                  max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    return ModelConfig(**{**fields, **overrides})


def optim_config() -> OptimConfig:
    return OptimConfig(lr=1e-3, weight_decay=0.1, clip_grad=0.5, warmup_steps=0)


def parallel_config(tp=1, pp=1, sp=False, shard="none", recompute="none", bucket_mb=0.002,
                    virtual_stages=1):
    # A tiny bucket size so the model's gradients span several buckets.
    return ParallelConfig(tp=tp, pp=pp, sp=sp, shard=shard, recompute=recompute,
                          bucket_mb=bucket_mb, virtual_stages=virtual_stages)


def precision_config(dtype="fp32", **kw) -> PrecisionConfig:
    return PrecisionConfig(dtype=dtype, **kw)


def make_steps(steps: int, global_batch: int, seq: int = SEQ, vocab: int = VOCAB,
               seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Per step, [global_batch, seq] packed samples: 1-3 documents per row, restarting
    positions, a few pad tokens (id 1) at the end of some rows, and a random loss mask."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        tokens = torch.randint(3, vocab, (global_batch, seq), generator=g)
        labels = torch.randint(3, vocab, (global_batch, seq), generator=g)
        mask = (torch.rand(global_batch, seq, generator=g) < 0.7).float()
        doc = torch.zeros(global_batch, seq, dtype=torch.long)
        pos = torch.zeros(global_batch, seq, dtype=torch.long)
        for r in range(global_batch):
            cuts = sorted(torch.randint(1, seq, (2,), generator=g).tolist())
            d = 0
            start = 0
            for i in range(seq):
                if i in cuts and i != start:
                    d, start = d + 1, i
                doc[r, i], pos[r, i] = d, i - start
            if r % 3 == 0:  # padding at the end of the row: its own document, no loss
                tokens[r, -2:], mask[r, -2:], doc[r, -2:] = 1, 0.0, d + 1
        out.append({"tokens": tokens, "labels": labels, "loss_mask": mask,
                    "position_ids": pos, "doc_ids": doc})
    return out


def micro_batches(step: dict, dp_rank: int, dp: int, micro: int) -> list[dict]:
    """This data-parallel rank's contiguous slice of the step, cut into micro-batches (as the
    trainer's PackedLoader does)."""
    n = next(iter(step.values())).shape[0] // dp
    rows = range(dp_rank * n, (dp_rank + 1) * n)
    return [{k: v[rows.start + i: rows.start + i + micro] for k, v in step.items()}
            for i in range(0, n, micro)]


def _loss_sum(model, b, layers, stage_of_layer, streams, dp_rank) -> torch.Tensor:
    """The unsharded model run layer by layer, each pipeline stage's layers on the dropout
    stream the engine documents for (data-parallel rank, stage): seed + 100 * stage, one stream
    per data-parallel rank. The loss is plain F.cross_entropy on full logits."""
    dec = model.decoder

    def on(stage, fn):
        torch.set_rng_state(streams[dp_rank, stage])
        out = fn()
        streams[dp_rank, stage] = torch.get_rng_state()
        return out

    h = on(0, lambda: dec.embed(b["tokens"], b["position_ids"]))
    for i, layer in enumerate(layers):
        h = on(stage_of_layer[i], lambda layer=layer, h=h: layer(h, b["doc_ids"], b["doc_ids"]))
    logits = torch.nn.functional.linear(dec.head(h), dec.embed_tokens.weight)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                           b["labels"].reshape(-1), reduction="none")
    return (ce * b["loss_mask"].reshape(-1)).sum()


def reference_run(steps: list[dict], micro: int, cfg=None, optim=None, pp: int = 1,
                  dp: int = 1) -> dict:
    """One process, plain model, torch.optim.AdamW (no decay on biases and LayerNorms) and
    clip_grad_norm_: losses, grad norms and final weights. With dropout, `pp` and `dp` say
    which of the engine's per-(stage, data-parallel rank) streams each draw comes from (with
    dropout 0 they change nothing)."""
    from optiml_engine.distributed.pipeline import stage_layer_range

    cfg, optim = cfg or tiny_config(), optim or optim_config()
    torch.manual_seed(SEED)
    model = OPTForCausalLM(cfg)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=optim.lr,
                            betas=tuple(optim.betas), eps=optim.eps)
    layers = list(model.decoder.layers)
    stage_of_layer = {i: s for s in range(pp) for i in stage_layer_range(len(layers), pp, s)}
    streams = {}
    for s in range(pp):
        torch.manual_seed(SEED + 100 * s)
        streams.update({(r, s): torch.get_rng_state() for r in range(dp)})
    losses, norms = [], []
    for step in steps:
        n = float(step["loss_mask"].sum())
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for r in range(dp):
            for b in micro_batches(step, r, dp, micro):
                loss = _loss_sum(model, b, layers, stage_of_layer, streams, r)
                (loss / n).backward()
                total += float(loss.detach())
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip_grad)))
        opt.step()
        losses.append(total / n)
    return {"losses": losses, "norms": norms,
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def local_reference(name: str, param, full: torch.Tensor, tp: int, tp_rank: int):
    dim = getattr(param, "tp_shard_dim", None)
    return full if dim is None or tp == 1 else full.chunk(tp, dim)[tp_rank]


def without_key_bias(name: str, t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The key bias has an exactly-zero true gradient (adding a constant to every key shifts a
    query's scores uniformly, which softmax ignores), so its computed gradient is round-off that
    Adam normalises into full-size, run-dependent steps. Compare everything else."""
    if not name.endswith("qkv_proj.bias"):
        return t
    per_head = t.view(-1, 3, head_dim)
    return torch.cat([per_head[:, 0], per_head[:, 2]], dim=1).reshape(-1)


def max_weight_error(model, ref_weights: dict, tp: int, tp_rank: int) -> float:
    """Largest ||local - reference|| / ||reference|| over this rank's parameter tensors (a norm,
    not an elementwise max: Adam turns an element whose gradient is at round-off level, such
    as a ReLU unit on its kink, into a whole step either way)."""
    head_dim = model.config.hidden_size // model.config.num_heads
    worst = 0.0
    for name, p in model.named_parameters():
        ref = local_reference(name, p, ref_weights[name], tp, tp_rank)
        got = without_key_bias(name, p.detach().float(), head_dim)
        ref = without_key_bias(name, ref, head_dim)
        err = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
        worst = max(worst, err)
    return worst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world, port, args):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        fn(rank, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, world: int, *args) -> None:
    """Run fn(rank, *args) on `world` fresh processes joined in one gloo group."""
    mp.spawn(_entry, args=(fn, world, free_port(), args), nprocs=world, join=True)


def tiny_hf(path, layout: str) -> str:
    """A random tiny HF OPT saved at `path`: `pre_ln`, or 350M's post-LN with project_in/out."""
    import pytest

    transformers = pytest.importorskip("transformers")
    extra = {} if layout == "pre_ln" else dict(do_layer_norm_before=False, word_embed_proj_dim=16)
    torch.manual_seed(0)
    hf = transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=4, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, **extra))
    with torch.no_grad():  # random LayerNorms and biases so a misplaced slice cannot hide
        for name, p in hf.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(path)
    return str(path)
