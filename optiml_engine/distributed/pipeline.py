"""Pipeline parallelism: which layers each stage runs, and the 1F1B schedule.

Stage s runs a contiguous range of layers (`stage_layer_range`); what a model keeps on each
stage is the model's own business (model/parallelize.py for OPT).

1F1B (PipeDream-flush, as in Megatron): stage s runs pp - s - 1 warm-up forwards, then
alternates one forward and one backward, then drains the remaining backwards. Activations
exchanged between stages have a fixed shape [micro_batch, seq (/ tp with SP), hidden] (packed
samples all have the same length), so receivers pre-allocate their buffers. Each exchange
(a warm-up send, send-forward-receive-backward, send-backward-receive-forward, ...) is one
batch of point-to-point operations, as in Megatron.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.distributed as dist


def stage_layer_range(num_layers: int, pp: int, stage: int) -> range:
    """Contiguous layers of `stage`; earlier stages take one more when it does not divide."""
    if num_layers < pp:
        raise ValueError(f"{num_layers} layers cannot fill {pp} pipeline stages")
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


def communicate(sends=(), recvs=()) -> None:
    """One exchange: post every send and receive as one `batch_isend_irecv` (one NCCL group,
    as Megatron's `_communicate`), then wait for all of them. Inside a group the operations
    progress together, so two neighbours that both send first cannot block each other, as
    ungrouped isend/irecv can on NCCL (NVIDIA/nccl#479, #783).

    sends, recvs: (tensor, global rank) pairs. Messages between one pair of ranks in one
    direction are matched by order, not by tag (NCCL ignores tags): the schedules post
    them in the same order on both sides, sends and receives each in their list's order."""
    ops = [dist.P2POp(dist.isend, t.contiguous(), peer) for t, peer in sends]
    ops += [dist.P2POp(dist.irecv, t, peer) for t, peer in recvs]
    if ops:  # batch_isend_irecv refuses an empty list
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def _exchange(send_next=None, send_prev=None, recv_next=None, recv_prev=None, peers=(None, None)):
    """One exchange of the 1F1B schedule with this stage's neighbours (prev, next)."""
    prev, nxt = peers
    communicate(
        sends=[(t, peer) for t, peer in ((send_next, nxt), (send_prev, prev)) if t is not None],
        recvs=[(t, peer) for t, peer in ((recv_next, nxt), (recv_prev, prev)) if t is not None])


def one_f_one_b(forward_step, backward_step, num_micro: int, stage: int, pp: int,
                stage_ranks: list[int], shape, dtype, device) -> None:
    """Run the 1F1B schedule of this stage.

    forward_step(i, x) -> y: x is the received activation (None on the first stage), y the
    activation to send (the loss on the last stage). backward_step(i, x, y, dy) -> dx.
    """
    first, last = stage == 0, stage == pp - 1
    peers = (None if first else stage_ranks[stage - 1], None if last else stage_ranks[stage + 1])

    def buffer(grad: bool):
        return torch.empty(shape, dtype=dtype, device=device, requires_grad=grad)

    def recv_forward():
        if first:
            return None
        x = buffer(False)
        _exchange(recv_prev=x, peers=peers)
        return x.requires_grad_()

    warmup = min(pp - stage - 1, num_micro)
    steady = num_micro - warmup
    saved: deque = deque()
    fwd_i = 0

    for _ in range(warmup):
        x = recv_forward()
        y = forward_step(fwd_i, x)
        _exchange(send_next=None if last else y.detach(), peers=peers)
        saved.append((fwd_i, x, y))
        fwd_i += 1

    x = recv_forward() if steady else None
    for k in range(steady):
        y = forward_step(fwd_i, x)
        saved.append((fwd_i, x, y))
        fwd_i += 1
        dy = None if last else buffer(False)
        _exchange(send_next=None if last else y.detach(), recv_next=dy, peers=peers)
        i, x0, y0 = saved.popleft()
        dx = backward_step(i, x0, y0, dy)
        if k == steady - 1:
            _exchange(send_prev=None if first else dx, peers=peers)
        else:
            x = None if first else buffer(False)
            _exchange(send_prev=None if first else dx, recv_prev=x, peers=peers)
            if x is not None:
                x.requires_grad_()

    while saved:
        i, x0, y0 = saved.popleft()
        dy = None if last else buffer(False)
        _exchange(recv_next=dy, peers=peers)
        dx = backward_step(i, x0, y0, dy)
        _exchange(send_prev=None if first else dx, peers=peers)
