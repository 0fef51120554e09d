"""The interleaved 1F1B schedule (Narayanan et al. 2021): each pipeline rank holds v model
chunks, rank r running global stages r, r + pp, ..., r + (v - 1) pp, which shrinks the pipeline
bubble v-fold for the same number of micro-batches.

The per-rank order of forward (F) and backward (B) tasks is Megatron's: micro-batches go in
groups of pp through chunk 0, then chunk 1, ...; (pp - r - 1) * 2 + (v - 1) * pp warm-up
forwards, then one F and one B alternately, then the remaining Bs.

Communication is Megatron's too, and needs no tags (NCCL ignores them): the tasks form steps
(one F per warm-up step, an F and a B per steady step, one B per cool-down step), and after
each step a rank makes one exchange, a single `batch_isend_irecv`, that sends the outputs of
the step (activation to the next stage, gradient to the previous one) and receives the inputs
of the next step. Every rank walks the same micro-batch order through each chunk, so the
messages from one rank to another are posted in the same order by the sender and by the
receiver, and are matched by that order alone. With pp = 2 both neighbours are the same rank
and activations and gradients share one direction; they stay matched because both sides post
them task by task, F before B (tests/distributed/test_p2p_schedules.py checks the matching and
that no exchange waits forever, for many pp, v and micro-batch counts).
"""

from __future__ import annotations

import torch

from optiml_engine.distributed.pipeline import communicate, stage_layer_range

Task = tuple[str, int, int]  # ("F" or "B", chunk, micro-batch)


def chunk_layer_ranges(num_layers: int, pp: int, v: int, rank: int) -> list[range]:
    return [stage_layer_range(num_layers, pp * v, c * pp + rank) for c in range(v)]


def interleaved_steps(num_micro: int, pp: int, v: int, rank: int) -> list[list[Task]]:
    """This rank's tasks in the schedule's steps; the rank exchanges once after each step."""
    total = num_micro * v

    def forward(k):
        group, rest = divmod(k, pp * v)
        return rest // pp, group * pp + rest % pp

    def backward(k):
        chunk, micro = forward(k)
        return v - 1 - chunk, micro

    warmup = min((pp - rank - 1) * 2 + (v - 1) * pp, total)
    steps = [[("F", *forward(k))] for k in range(warmup)]
    steps += [[("F", *forward(warmup + i)), ("B", *backward(i))] for i in range(total - warmup)]
    steps += [[("B", *backward(k))] for k in range(total - warmup, total)]
    return steps


def interleaved_order(num_micro: int, pp: int, v: int, rank: int) -> list[Task]:
    """This rank's tasks in order: ("F" or "B", chunk, micro-batch)."""
    return [task for step in interleaved_steps(num_micro, pp, v, rank) for task in step]


def run_interleaved(forward_step, backward_step, num_micro: int, rank: int, pp: int, v: int,
                    stage_ranks: list[int], shape, dtype, device) -> None:
    """forward_step(chunk, micro, x) -> y; backward_step(chunk, micro, x, y, dy, is_final) -> dx.
    x is None on global stage 0, dy None on the last global stage (y is then the loss)."""
    if num_micro % pp:
        raise ValueError(f"the interleaved schedule needs micro-batches ({num_micro}) in "
                         f"multiples of the pipeline size ({pp})")
    stages = pp * v

    def source(kind: str, chunk: int) -> int | None:
        """The global stage whose message the task consumes (None: it needs none)."""
        stage = chunk * pp + rank
        if kind == "F":
            return stage - 1 if stage > 0 else None
        return stage + 1 if stage < stages - 1 else None

    received: dict[Task, torch.Tensor] = {}

    def receives(step: list[Task]) -> list[tuple[torch.Tensor, int]]:
        out = []
        for task in step:
            src = source(*task[:2])
            if src is not None:
                received[task] = torch.empty(shape, dtype=dtype, device=device)
                out.append((received[task], stage_ranks[src % pp]))
        return out

    steps = interleaved_steps(num_micro, pp, v, rank)
    last_task = steps[-1][-1]
    saved = {}
    communicate(recvs=receives(steps[0]))
    for n, step in enumerate(steps):
        sends = []
        for task in step:
            kind, chunk, micro = task
            stage = chunk * pp + rank
            if kind == "F":
                x = received.pop(task, None)
                if x is not None:
                    x.requires_grad_()
                y = forward_step(chunk, micro, x)
                saved[chunk, micro] = (x, y)
                if stage < stages - 1:
                    sends.append((y.detach(), stage_ranks[(stage + 1) % pp]))
            else:
                x, y = saved.pop((chunk, micro))
                dx = backward_step(chunk, micro, x, y, received.pop(task, None),
                                   task == last_task)
                if stage > 0:
                    sends.append((dx, stage_ranks[(stage - 1) % pp]))
        communicate(sends, receives(steps[n + 1]) if n + 1 < len(steps) else [])
