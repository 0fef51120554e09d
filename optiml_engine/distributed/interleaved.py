"""The interleaved 1F1B schedule (Narayanan et al. 2021): each pipeline rank holds v model
chunks, rank r running global stages r, r + pp, ..., r + (v - 1) pp, which shrinks the pipeline
bubble v-fold for the same number of micro-batches.

The per-rank order of forward (F) and backward (B) tasks is Megatron's: micro-batches go in
groups of pp through chunk 0, then chunk 1, ...; (pp - r - 1) * 2 + (v - 1) * pp warm-up
forwards, then one F and one B alternately, then the remaining Bs. Sends are non-blocking and
waited at the end; a rank blocks only to receive a task's input, and every message carries a
tag naming its stage, micro-batch and direction, so messages that share a pair of ranks (with
pp = 2 both directions carry activations and gradients) cannot be confused. gloo matches tags;
NCCL ignores them, so the engine allows this schedule on gloo only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from optiml_engine.distributed.pipeline import stage_layer_range


def chunk_layer_ranges(num_layers: int, pp: int, v: int, rank: int) -> list[range]:
    return [stage_layer_range(num_layers, pp * v, c * pp + rank) for c in range(v)]


def interleaved_order(num_micro: int, pp: int, v: int, rank: int) -> list[tuple[str, int, int]]:
    """This rank's tasks in order: ("F" or "B", chunk, micro-batch)."""
    total = num_micro * v

    def forward(k):
        group, rest = divmod(k, pp * v)
        return rest // pp, group * pp + rest % pp

    def backward(k):
        chunk, micro = forward(k)
        return v - 1 - chunk, micro

    warmup = min((pp - rank - 1) * 2 + (v - 1) * pp, total)
    order = [("F", *forward(k)) for k in range(warmup)]
    for i in range(total - warmup):
        order += [("F", *forward(warmup + i)), ("B", *backward(i))]
    order += [("B", *backward(k)) for k in range(total - warmup, total)]
    return order


def run_interleaved(forward_step, backward_step, num_micro: int, rank: int, pp: int, v: int,
                    stage_ranks: list[int], shape, dtype, device) -> None:
    """forward_step(chunk, micro, x) -> y; backward_step(chunk, micro, x, y, dy, is_final) -> dx.
    x is None on global stage 0, dy None on the last global stage (y is then the loss)."""
    if num_micro % pp:
        raise ValueError(f"the interleaved schedule needs micro-batches ({num_micro}) in "
                         f"multiples of the pipeline size ({pp})")
    stages = pp * v

    def peer(stage):
        return stage_ranks[stage % pp]

    def tag(stage, micro, backward):  # named after the receiving stage
        return (stage * num_micro + micro) * 2 + backward

    pending, saved = [], {}
    order = interleaved_order(num_micro, pp, v, rank)
    for n, (kind, chunk, micro) in enumerate(order):
        stage = chunk * pp + rank
        if kind == "F":
            x = None
            if stage > 0:
                x = torch.empty(shape, dtype=dtype, device=device)
                dist.irecv(x, peer(stage - 1), tag=tag(stage, micro, 0)).wait()
                x.requires_grad_()
            y = forward_step(chunk, micro, x)
            saved[chunk, micro] = (x, y)
            if stage < stages - 1:
                out = y.detach().contiguous()
                pending.append((dist.isend(out, peer(stage + 1), tag=tag(stage + 1, micro, 0)),
                                out))
        else:
            x, y = saved.pop((chunk, micro))
            dy = None
            if stage < stages - 1:
                dy = torch.empty(shape, dtype=dtype, device=device)
                dist.irecv(dy, peer(stage + 1), tag=tag(stage, micro, 1)).wait()
            dx = backward_step(chunk, micro, x, y, dy, n == len(order) - 1)
            if stage > 0:
                dx = dx.contiguous()
                pending.append((dist.isend(dx, peer(stage - 1), tag=tag(stage - 1, micro, 1)),
                                dx))
    for work, _ in pending:
        work.wait()
