"""The pipeline schedules' point-to-point traffic is safe without tags (as NCCL needs):

- traced in one process (torch.distributed's P2POp and batch_isend_irecv replaced by a
  recorder), every message that one rank sends to another is received, in the same order, by
  the receiver's matching receive, and is used there as the input it was computed for; and the
  exchanges, run as NCCL runs a batch (an operation completes only once both sides have posted
  it, a rank posts its next batch only when the last one completed), never wait forever;
- on 2 and 4 gloo processes, both schedules give the gradients and losses of one process
  running the same chain of stages.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from optiml_engine.distributed.interleaved import run_interleaved
from optiml_engine.distributed.pipeline import one_f_one_b

sys.path.insert(0, str(Path(__file__).parents[1] / "parallel"))

import harness  # noqa: E402

SHAPE = (2, 3)


# -- tracing ----------------------------------------------------------------------------------

class _Op:
    """Stands in for dist.P2POp (which needs a process group)."""

    def __init__(self, op, tensor, peer=None, group=None, tag=0):
        self.op, self.tensor, self.peer = op, tensor, peer


def trace(monkeypatch, pp: int, v: int, num_micro: int, stage_ranks: list[int]):
    """Run every rank's schedule (1F1B when v == 1) with recorded point-to-point operations.
    Returns {rank: [batch, ...]}, a batch being the list of (direction, peer, label) posted in
    one batch_isend_irecv; label = (kind, stage, micro), the input the message is: for a send,
    what its tensor was computed as; for a receive, what the rank then used the buffer for."""
    produced, consumed, keep = {}, {}, []
    raw: dict[int, list] = {}

    for pipe_rank, rank in enumerate(stage_ranks):
        batches = raw[rank] = []

        def post(ops, batches=batches):
            batches.append([("send" if op.op is dist.isend else "recv", op.peer, op.tensor)
                            for op in ops])
            keep.extend(op.tensor for op in ops)
            return []

        monkeypatch.setattr(dist, "P2POp", _Op)
        monkeypatch.setattr(dist, "batch_isend_irecv", post)

        def forward(stage, micro, x):
            if x is not None:
                consumed[x.data_ptr()] = ("act", stage, micro)
            y = torch.zeros(SHAPE)
            keep.append(y)
            produced[y.data_ptr()] = ("act", stage + 1, micro)
            return y

        def backward(stage, micro, dy):
            if dy is not None:
                consumed[dy.data_ptr()] = ("grad", stage, micro)
            dx = torch.zeros(SHAPE)
            keep.append(dx)
            produced[dx.data_ptr()] = ("grad", stage - 1, micro)
            return dx

        if v == 1:
            one_f_one_b(lambda i, x, s=pipe_rank: forward(s, i, x),
                        lambda i, x, y, dy, s=pipe_rank: backward(s, i, dy),
                        num_micro, pipe_rank, pp, stage_ranks, SHAPE, torch.float32, "cpu")
        else:
            run_interleaved(lambda c, m, x, r=pipe_rank: forward(c * pp + r, m, x),
                            lambda c, m, x, y, dy, final, r=pipe_rank: backward(c * pp + r, m, dy),
                            num_micro, pipe_rank, pp, v, stage_ranks, SHAPE, torch.float32,
                            "cpu")

    def label(direction, t):  # a received buffer that is never used has no label: KeyError
        return (produced if direction == "send" else consumed)[t.data_ptr()]

    return {rank: [[(d, peer, label(d, t)) for d, peer, t in batch] for batch in batches]
            for rank, batches in raw.items()}


def streams(traced) -> dict[tuple[int, int, str], list]:
    """(src, dst, side) -> labels of the messages from src to dst, in the order `side` posts
    them ("send": src's sends to dst; "recv": dst's receives from src)."""
    out = defaultdict(list)
    for rank, batches in traced.items():
        for batch in batches:
            for direction, peer, lab in batch:
                key = (rank, peer, "send") if direction == "send" else (peer, rank, "recv")
                out[key].append(lab)
    return out


def stuck_ranks(traced) -> list[int]:
    """Run the batches as NCCL does and return the ranks left waiting (empty: no deadlock).
    The j-th message from a to b is a's j-th send to b and b's j-th receive from a (order is
    all that matches them); it completes only while both batches holding it are posted (a send
    may not complete before its receive is posted); a rank posts its next batch once every
    operation of its current one has completed."""
    ops = {}  # rank -> [set of (src, dst, j, side)] per batch
    for rank, batches in traced.items():
        count = defaultdict(int)
        ops[rank] = []
        for batch in batches:
            keys = set()
            for direction, peer, _ in batch:
                pair = (rank, peer) if direction == "send" else (peer, rank)
                keys.add((*pair, count[pair, direction], direction))
                count[pair, direction] += 1
            ops[rank].append(keys)
    head = dict.fromkeys(ops, 0)
    done: set = set()
    progress = True
    while progress:
        progress = False
        posted = set().union(*(ops[r][head[r]] for r in ops if head[r] < len(ops[r])))
        for key in posted - done:
            other = "recv" if key[3] == "send" else "send"
            if (*key[:3], other) in posted:
                done.add(key)
        for r in ops:
            while head[r] < len(ops[r]) and ops[r][head[r]] <= done:
                head[r] += 1
                progress = True
    return [r for r in ops if head[r] < len(ops[r])]


def test_the_deadlock_check_sees_the_nccl_deadlock():
    """Two neighbours that each send, then receive, in separate batches wait for each other;
    one batch each does not."""
    a, b = ("act", 1, 0), ("grad", 0, 0)
    ungrouped = {0: [[("send", 1, a)], [("recv", 1, b)]], 1: [[("send", 0, b)], [("recv", 0, a)]]}
    grouped = {0: [[("send", 1, a), ("recv", 1, b)]], 1: [[("send", 0, b), ("recv", 0, a)]]}
    assert stuck_ranks(ungrouped) == [0, 1]
    assert stuck_ranks(grouped) == []
    # A send whose receive is never posted never completes.
    assert stuck_ranks({0: [[("send", 1, a)]], 1: []}) == [0]


CASES = ([(pp, 1, m) for pp in (2, 3, 4) for m in sorted({1, pp - 1, pp, pp + 1, 3 * pp})]
         + [(pp, v, k * pp) for pp in (2, 3, 4) for v in (2, 3) for k in (1, 2, 3)])


@pytest.mark.parametrize("pp,v,num_micro", CASES, ids=[f"pp{p}-v{v}-m{m}" for p, v, m in CASES])
def test_messages_match_by_order_and_never_deadlock(monkeypatch, pp, v, num_micro):
    stage_ranks = [3 * s + 1 for s in range(pp)]  # global ranks that are not the stage indices
    traced = trace(monkeypatch, pp, v, num_micro, stage_ranks)
    pairs = streams(traced)
    for src, dst in {(s, d) for s, d, _ in pairs}:  # one to one, in order
        assert pairs[src, dst, "send"] == pairs[src, dst, "recv"], (src, dst)
    # Every stage boundary carries each micro-batch's activation forward and gradient back.
    messages = sorted(lab for (_, _, side), labs in pairs.items() if side == "send" for lab in labs)
    want = sorted([("act", s, m) for s in range(1, pp * v) for m in range(num_micro)]
                  + [("grad", s, m) for s in range(pp * v - 1) for m in range(num_micro)])
    assert messages == want
    assert stuck_ranks(traced) == []


# -- against one process ----------------------------------------------------------------------

def chain(stages: int, num_micro: int):
    """A chain of stages: h = tanh(x @ W_s), the last one returning sum(h * T_m) as the loss;
    micro-batch m enters as X_m. Float64, so the layouts agree to round-off."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(SHAPE[1], SHAPE[1], generator=g, dtype=torch.float64)
               for _ in range(stages)]
    inputs = [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(num_micro)]
    targets = [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(num_micro)]
    return weights, inputs, targets


def stage_fn(s, stages, w, x, target):
    h = torch.tanh(x @ w)
    return (h * target).sum() if s == stages - 1 else h


def reference(stages: int, num_micro: int):
    weights, inputs, targets = chain(stages, num_micro)
    weights = [w.requires_grad_() for w in weights]
    losses = []
    for m in range(num_micro):
        h = inputs[m]
        for s, w in enumerate(weights):
            h = stage_fn(s, stages, w, h, targets[m])
        h.backward()
        losses.append(float(h))
    return [w.grad for w in weights], losses


def run_case(rank: int, pp: int, v: int, num_micro: int, stage_ranks: list[int]) -> None:
    stages, pipe_rank = pp * v, stage_ranks.index(rank)
    weights, inputs, targets = chain(stages, num_micro)
    mine = {c * pp + pipe_rank: weights[c * pp + pipe_rank].requires_grad_() for c in range(v)}
    losses, calls = {}, []

    def forward(chunk, micro, x):
        s = chunk * pp + pipe_rank
        assert (x is None) == (s == 0)
        calls.append(("F", chunk, micro))
        y = stage_fn(s, stages, mine[s], inputs[micro] if x is None else x, targets[micro])
        if s == stages - 1:
            losses[micro] = float(y)
        return y

    def backward(chunk, micro, x, y, dy, final):
        assert (dy is None) == (chunk * pp + pipe_rank == stages - 1)
        calls.append(("B", chunk, micro, final))
        torch.autograd.backward(y, dy)
        return x.grad if x is not None else None

    if v == 1:
        one_f_one_b(lambda i, x: forward(0, i, x),
                    lambda i, x, y, dy: backward(0, i, x, y, dy, None),
                    num_micro, pipe_rank, pp, stage_ranks, SHAPE, torch.float64, "cpu")
    else:
        run_interleaved(forward, backward, num_micro, pipe_rank, pp, v, stage_ranks, SHAPE,
                        torch.float64, "cpu")

    tasks = sorted((c, m) for c in range(v) for m in range(num_micro))
    assert sorted(t[1:3] for t in calls if t[0] == "F") == tasks
    assert sorted(t[1:3] for t in calls if t[0] == "B") == tasks
    if v > 1:  # is_final marks the last backward, and only it
        assert [t[3] for t in calls if t[0] == "B"] == [False] * (len(tasks) - 1) + [True]
    want_grads, want_losses = reference(stages, num_micro)
    for s, w in mine.items():
        torch.testing.assert_close(w.grad, want_grads[s], rtol=1e-12, atol=1e-12,
                                   msg=lambda m, s=s: f"stage {s}: {m}")
    if stages - 1 in mine:
        assert [losses[m] for m in range(num_micro)] == pytest.approx(want_losses, rel=1e-12)


def worker(rank: int, cases: list, stage_ranks: list[int]) -> None:
    for pp, v, num_micro in cases:
        try:
            run_case(rank, pp, v, num_micro, stage_ranks)
        except Exception as e:
            raise AssertionError(f"pp={pp} v={v} micro={num_micro}: {e}") from e
        dist.barrier()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_ranks_match_one_process():
    cases = [(2, 1, 1), (2, 1, 2), (2, 1, 5), (2, 2, 2), (2, 2, 4), (2, 2, 6), (2, 3, 4)]
    harness.spawn(worker, 2, cases, [0, 1])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_four_ranks_match_one_process():
    cases = [(4, 1, 3), (4, 1, 8), (4, 2, 4), (4, 2, 8), (4, 3, 8)]
    harness.spawn(worker, 4, cases, [2, 0, 3, 1])  # stage s on global rank stage_ranks[s]
