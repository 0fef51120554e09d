"""The workloads the kernel benchmark times: inputs and one callable per backend.

Each `*_cases` function returns {backend name: zero-argument callable running one forward +
backward (or one optimizer step)}, built only from backends that can run on the device.
`interpret=True` also builds the Triton cases on a CPU (under TRITON_INTERPRET=1: the GPU
check's dry run, which proves the plumbing, not the speed).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from optiml_engine.kernels import dispatch
from optiml_engine.kernels.attention import attention, sdpa_attention
from optiml_engine.kernels.cross_entropy import (
    FusedCrossEntropy,
    masked_cross_entropy,
    torch_masked_cross_entropy,
)
from optiml_engine.kernels.linear_cross_entropy import linear_cross_entropy

# --- attention ---------------------------------------------------------------------------------


def example_lengths(seq: int, n_examples: int, seed: int) -> list[int]:
    """n_examples random lengths filling `seq` exactly (instruction data: uneven lengths)."""
    g = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(seq - 1, generator=g)[: n_examples - 1].add(1).tolist())
    bounds = [0, *cuts, seq]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def causal_flops(lengths_per_row: list[list[int]], heads: int, head_dim: int) -> float:
    """Forward + backward FLOPs counted inside examples only (causal half of each L x L block).

    Forward: 2 matmuls of 2*L*L/2*D FLOPs; backward: 2.5x the forward (5 matmuls).
    """
    fwd = sum(4 * heads * head_dim * n * (n + 1) / 2 for row in lengths_per_row for n in row)
    return 3.5 * fwd


def attention_cases(batch, seq, heads, head_dim, n_examples, dtype, device, dropout_p=0.0,
                    interpret=False):
    lengths = [example_lengths(seq, n_examples, seed=b) for b in range(batch)]
    doc_ids = torch.stack([torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r))
                           for r in lengths]).to(device)
    q, k, v = (torch.randn(batch, seq, heads, head_dim, device=device, dtype=dtype,
                           requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)

    def run(fn):
        def step():
            for t in (q, k, v):
                t.grad = None
            fn().backward(grad)
        return step

    cases = {"sdpa_masked": run(lambda: sdpa_attention(q, k, v, doc_ids, dropout_p=dropout_p))}
    dev = torch.device(device)
    # On a GPU the per-example baseline is SDPA's flash backend (what flash-attention users get).
    flash = dev.type == "cuda" and dtype in (torch.float16, torch.bfloat16)

    def per_example():
        """What a user without packing support does: each example alone, unpadded."""
        outs = []
        with sdpa_flash() if flash else contextlib.nullcontext():
            for b, row in enumerate(lengths):
                start = 0
                for n in row:
                    sl = [t[b:b + 1, start:start + n].transpose(1, 2) for t in (q, k, v)]
                    outs.append(F.scaled_dot_product_attention(*sl, is_causal=True,
                                                               dropout_p=dropout_p))
                    start += n
        return torch.cat([o.transpose(1, 2).reshape(-1) for o in outs])

    cases["sdpa_per_example"] = lambda: (
        [setattr(t, "grad", None) for t in (q, k, v)],
        per_example().backward(grad.reshape(-1)),
    )
    for backend in ("triton", "flash_attn"):
        if (dev.type == "cuda" or interpret and backend == "triton") and \
                dispatch.backend_available(backend, dev)[0]:
            cases[backend] = run(lambda b=backend: attention(q, k, v, doc_ids, backend=b,
                                                             dropout_p=dropout_p))
    return cases, causal_flops(lengths, heads, head_dim)


def sdpa_flash():
    """SDPA restricted to its flash backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


# --- cross-entropy -----------------------------------------------------------------------------


def cross_entropy_inputs(tokens, vocab, hidden, dtype, device, seed=0, target_fraction=0.7):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) / math.sqrt(hidden)).to(device, dtype)
    w.requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    mask = (torch.rand(tokens, generator=g) < target_fraction).to(device)
    return h, w, targets, mask


def cross_entropy_variant(name, h, w, targets, mask):
    """One forward + backward of the output projection and the loss, by variant."""
    if name == "torch_unfused":
        loss = torch_masked_cross_entropy(h @ w.T, targets, mask)
    elif name == "torch_fused_grad":
        loss = FusedCrossEntropy.apply(h @ w.T, targets, mask.float(), "torch")
    elif name == "triton":
        loss = masked_cross_entropy(h @ w.T, targets, mask, backend="triton")
    elif name.startswith("linear_ce_chunk"):
        chunk = int(name.removeprefix("linear_ce_chunk"))
        loss = linear_cross_entropy(h, w, targets, mask, chunk_size=chunk, backend="torch")
    elif name.startswith("linear_ce_triton_chunk"):
        chunk = int(name.removeprefix("linear_ce_triton_chunk"))
        loss = linear_cross_entropy(h, w, targets, mask, chunk_size=chunk, backend="triton")
    else:
        raise ValueError(name)
    loss.backward()
    return loss


def cross_entropy_variants(device, interpret=False) -> list[str]:
    names = ["torch_unfused", "torch_fused_grad", "linear_ce_chunk512", "linear_ce_chunk1024"]
    if torch.device(device).type == "cuda" or interpret:
        names += ["triton", "linear_ce_triton_chunk4096"]
    return names


# --- AdamW -------------------------------------------------------------------------------------


def opt_layer_shapes(hidden: int, layers: int, vocab: int, positions: int) -> list[tuple]:
    """Parameter shapes of an OPT decoder (fused QKV), embeddings included."""
    per_layer = [(3 * hidden, hidden), (3 * hidden,), (hidden, hidden), (hidden,), (hidden,),
                 (hidden,), (4 * hidden, hidden), (4 * hidden,), (hidden, 4 * hidden), (hidden,),
                 (hidden,), (hidden,)]
    return [(vocab, hidden), (positions, hidden)] + per_layer * layers + [(hidden,), (hidden,)]


def adamw_cases(shapes, param_dtype, device, interpret=False):
    from optiml_engine.kernels.adamw import adamw_step

    params = [torch.randn(s, device=device).to(param_dtype) for s in shapes]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    masters = [p.float() for p in params] if param_dtype != torch.float32 else None
    m = [torch.zeros(s, device=device) for s in shapes]
    v = [torch.zeros(s, device=device) for s in shapes]
    hp = dict(lr=1e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=1)
    dev = torch.device(device)
    cases = {}
    for backend in ("loop", "foreach", "torch_fused", "triton", "cuda", "apex"):
        if backend == "loop" or dispatch.backend_available(backend, dev)[0]:
            if backend == "triton" and dev.type != "cuda" and not interpret:
                continue  # the interpreter is a test tool, not a backend to time
            cases[backend] = (lambda b=backend: adamw_step(params, grads, m, v, masters,
                                                           backend=b, **hp))
    # torch's own AdamW on fp32 params (what a user picks instead): foreach and fused.
    tparams = [p.detach().float().clone().requires_grad_() for p in params]
    for p, g in zip(tparams, grads, strict=True):
        p.grad = g.float()
    for name, kw in (("torch.optim(foreach)", dict(foreach=True)),
                     ("torch.optim(fused)", dict(fused=True))):
        try:
            opt = torch.optim.AdamW(tparams, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, **kw)
        except (RuntimeError, ValueError):
            continue
        cases[name] = opt.step
    n = sum(math.prod(s) for s in shapes)
    pbytes = torch.tensor([], dtype=param_dtype).element_size()
    # Per element: read grad, master, m, v; write master, m, v (+ the low-precision param).
    bytes_moved = n * (pbytes + 24 + (pbytes if masters is not None else 0))
    return cases, n, bytes_moved
