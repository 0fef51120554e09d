"""The FLOPs a training step needs: one formula for the benchmarks, the planner and MFU logging.

"Needed" counts only the work the loss depends on, whatever a backend actually computes:

    needed = dense_flops_per_token(cfg)  * real_tokens     # 6 * P_blocks per token
           + output_flops_per_token(cfg) * target_tokens   # 6 * d_emb * vocab per loss token
           + 12 * num_layers * hidden * pairs               # QK^T and PV over kept causal pairs

- `P_blocks = num_layers * (4 * hidden^2 + 2 * hidden * ffn)`: the Q, K, V, out, fc1 and fc2
  weight matrices, plus `2 * hidden * word_embed_proj_dim` for OPT-350M's project_in/out.
  Biases, LayerNorms and embedding look-ups are not matmuls and are not counted.
- `target_tokens`: tokens with a loss (the engine projects only those onto the vocabulary);
  pass all tokens to count a full LM head, as a planner for pre-training would.
- `pairs = sum n(n+1)/2` over the examples packed in every sample (attention is causal within
  each example, never across: the paper's packing, §3.3), not the S x S square.
- 6 = 2 (multiply-add) x 3 (forward, input gradient, weight gradient); the attention's 12 is
  its two matmuls (QK^T, PV) x 2 x 3. Recomputation is not needed work and is not counted.

Padding, masked-out attention pairs and logits of non-target positions are waste by this count,
so a padded loop and a packed one over the same examples need the same FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def decoder_matmul_params(cfg) -> int:
    """P_blocks: weight-matrix parameters of the decoder layers (plus project_in/out)."""
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    p = cfg.num_layers * (4 * h * h + 2 * h * f)
    if cfg.word_embed_proj_dim != h:
        p += 2 * h * cfg.word_embed_proj_dim
    return p


def dense_flops_per_token(cfg) -> float:
    """Forward + backward FLOPs of the decoder's weight matmuls for one real token."""
    return 6.0 * decoder_matmul_params(cfg)


def output_flops_per_token(cfg) -> float:
    """Forward + backward FLOPs of the (tied) output projection for one token with a loss."""
    return 6.0 * cfg.word_embed_proj_dim * cfg.vocab_size


def attention_flops(cfg, pairs: int) -> float:
    """Forward + backward FLOPs of QK^T and PV over `pairs` kept (query, key) pairs."""
    return 12.0 * cfg.num_layers * cfg.hidden_size * pairs


def _example_lengths(seq_lens_per_sample) -> list[int]:
    """Flatten [[n, n, ...] per sample] (or a flat list of lengths) into example lengths."""
    out: list[int] = []
    for item in seq_lens_per_sample:
        out.extend([int(item)] if isinstance(item, int) else (int(n) for n in item))
    return out


def model_flops(cfg, seq_lens_per_sample: Iterable, target_tokens: int | None = None) -> float:
    """Needed FLOPs of one forward + backward over packed samples.

    `seq_lens_per_sample`: the example lengths of each sample, e.g. [[300, 700], [1024]]
    (a flat list of lengths is read the same way); `target_tokens`: tokens with a loss,
    default every token (a full LM head)."""
    lengths = _example_lengths(seq_lens_per_sample)
    tokens = sum(lengths)
    pairs = sum(n * (n + 1) // 2 for n in lengths)
    targets = tokens if target_tokens is None else int(target_tokens)
    return training_flops(cfg, tokens, targets, pairs)


def training_flops(cfg, real_tokens: int, target_tokens: int, pairs: int) -> float:
    """Needed FLOPs over these counts (the formula above)."""
    return (dense_flops_per_token(cfg) * real_tokens
            + output_flops_per_token(cfg) * target_tokens
            + attention_flops(cfg, pairs))


def causal_pairs(doc_ids: torch.Tensor, real: torch.Tensor | None = None) -> int:
    """Kept causal pairs of rows of `doc_ids` (batch x seq): sum of n(n+1)/2 over the runs of
    equal ids in each row, counting only positions where `real` is true."""
    total = 0
    for i, row in enumerate(doc_ids):
        ids = row if real is None else row[real[i]]
        _, counts = torch.unique_consecutive(ids, return_counts=True)
        total += int((counts * (counts + 1) // 2).sum())
    return total


def step_flops(cfg, micro_batches: Iterable[dict], pad_id: int = 1) -> float:
    """Needed FLOPs of one optimizer step over packed micro-batches as the loader serves them
    (fields `tokens`, `doc_ids`, `loss_mask`); padding (`pad_id`) is not real work."""
    real = target = pairs = 0
    for b in micro_batches:
        keep = b["tokens"] != pad_id
        real += int(keep.sum())
        target += int((b["loss_mask"] > 0).sum())
        pairs += causal_pairs(b["doc_ids"], keep)
    return training_flops(cfg, real, target, pairs)


# Dense bf16 tensor-core peaks (datasheets, TFLOP/s, without sparsity) that MFU is measured
# against. `cpu` has no datasheet figure: set logging.peak_tflops (the fp32 torch.mm rate that
# `python tools/bench_train.py --realistic` measures is a fair one).
PEAK_TFLOPS: dict[str, float | None] = {
    "a100-40gb": 312.0,
    "a100-80gb": 312.0,
    "h100": 989.0,  # SXM; the PCIe card is 756
    "h200": 989.0,
    "cpu": None,
}


def device_peak_key(device_name: str, memory_gib: float = 0.0) -> str | None:
    """The PEAK_TFLOPS key of a device name as torch reports it (None: not in the table)."""
    name = device_name.lower()
    if name == "cpu":
        return "cpu"
    if "a100" in name:
        return "a100-80gb" if memory_gib > 48 else "a100-40gb"
    for key in ("h200", "h100"):
        if key in name:
            return key
    return None
