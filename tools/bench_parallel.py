"""Tokens per second and per-rank memory of each parallel layout, against one process.

    python tools/bench_parallel.py                       # CPU (gloo), the demo model
    python tools/bench_parallel.py --layouts 1x1x1 2x1x1 --hidden 256 --layers 8
    python tools/bench_parallel.py --layouts 1x1x2 --shard zero3 --save   # + a checkpoint save

A layout is TPxPPxDP. Each runs on TP*PP*DP fresh processes (gloo on CPU; NCCL with one GPU
per rank when a CUDA device per rank exists) with synthetic packed batches of the same global
batch, so every layout processes the same tokens per step. Memory per rank, in MB: what the
rank keeps after the warm-up steps (weights, gradients, optimizer state), the extra it holds at
the peak of a timed step, and with --save of a checkpoint save; on CPU measured as the C heap in
use (benchmarks/tensor_memory.py), on GPUs with torch.cuda's allocator counters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optiml_engine.benchmarks.tensor_memory import PeakMemory, heap_in_use  # noqa: E402
from optiml_engine.config import (  # noqa: E402
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
)
from optiml_engine.distributed import checkpoint as ckpt  # noqa: E402
from optiml_engine.distributed import state  # noqa: E402
from optiml_engine.model import OPTForCausalLM  # noqa: E402
from optiml_engine.training.engine import Engine  # noqa: E402


def batches(global_batch: int, seq: int, vocab: int, dp_rank: int, dp: int, micro: int,
            device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, vocab, (global_batch, seq), generator=g)
    step = {"tokens": tokens, "labels": torch.roll(tokens, -1, 1),
            "loss_mask": torch.ones(global_batch, seq),
            "position_ids": torch.arange(seq).repeat(global_batch, 1) % 128,
            "doc_ids": torch.arange(seq).repeat(global_batch, 1) // 128}
    n = global_batch // dp
    return [{k: v[dp_rank * n + i: dp_rank * n + i + micro].to(device) for k, v in step.items()}
            for i in range(0, n, micro)]


def worker(rank: int, world: int, port: int, args, layout, out: str) -> None:
    tp, pp, dp = layout
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                init_method=f"tcp://127.0.0.1:{port}")
    state.initialize(tp, pp)
    cfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                      num_heads=args.heads, max_position_embeddings=args.seq, dropout=0.0)
    device = torch.device("cuda" if cuda else "cpu")
    before = torch.cuda.memory_allocated() if cuda else heap_in_use()
    torch.manual_seed(0)
    model = OPTForCausalLM(cfg).to(device)
    par = ParallelConfig(tp=tp, pp=pp, sp=args.sp and tp > 1, shard=args.shard)
    engine = Engine(model, par, OptimConfig(lr=1e-4), PrecisionConfig(dtype=args.dtype))
    micro = batches(args.global_batch, args.seq, args.vocab, state.dp_rank(), dp,
                    args.micro_batch, device)
    mb = {}
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            if world > 1:
                dist.barrier()
            mb["kept"] = ((torch.cuda.memory_allocated() if cuda else heap_in_use()) - before)
            start = time.perf_counter()
        if i == args.warmup and not cuda:  # the peak of one timed step (sampling costs time)
            with PeakMemory() as mem:
                engine.train_step(micro, 1e-4, 1.0)
            mb["step"] = mem.peak
        else:
            engine.train_step(micro, 1e-4, 1.0)
    if cuda:
        torch.cuda.synchronize()
        mb["step"] = torch.cuda.max_memory_allocated() - before - mb["kept"]
    seconds = time.perf_counter() - start
    if args.save:
        with tempfile.TemporaryDirectory() as where:
            where = [where] if state.global_rank() == 0 else [None]
            if world > 1:
                dist.broadcast_object_list(where)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                at = torch.cuda.memory_allocated()
            with PeakMemory() if not cuda else contextlib.nullcontext() as mem:
                ckpt.save(Path(where[0]) / "ckpt", engine.tensors(), {"step": 1,
                                                                   **engine.meta()})
            mb["save"] = torch.cuda.max_memory_allocated() - at if cuda else mem.peak
            if world > 1:
                dist.barrier()  # rank 0's directory goes when every rank is done with it
    tokens = args.global_batch * args.seq * args.steps
    Path(out, f"{rank}.json").write_text(json.dumps(
        {"tok_s": tokens / seconds, **{k: v / 2**20 for k, v in mb.items()}}))
    state.destroy()


def run_layout(args, layout) -> dict:
    world = layout[0] * layout[1] * layout[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, port, args, layout, out), nprocs=world, join=True)
        ranks = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]
    return {"tok_s": min(r["tok_s"] for r in ranks),
            **{k: [r[k] for r in ranks] for k in ("kept", "step", "save") if k in ranks[0]}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", nargs="+", default=["1x1x1", "2x1x1", "1x2x1", "1x1x2",
                                                     "2x2x1", "2x1x2", "1x2x2"])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=264)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--no-sp", dest="sp", action="store_false", help="sequence parallel off")
    p.add_argument("--shard", choices=["none", "zero1", "zero3"], default="none",
                   help="parallel.shard: what is sharded over data-parallel ranks")
    p.add_argument("--save", action="store_true", help="also measure a checkpoint save")
    args = p.parse_args(argv)
    print(f"model {args.hidden}d x {args.layers} layers, vocab {args.vocab}, seq {args.seq}, "
          f"{args.global_batch} samples/step in micro-batches of {args.micro_batch}, "
          f"{args.dtype}, {args.device}, {args.threads} thread(s)/rank, "
          f"sp={'on' if args.sp else 'off'}, shard={args.shard}")
    print(f"{'layout TPxPPxDP':<16}{'tokens/s':>10}{'vs 1 proc':>11}  MB per rank: kept, "
          f"+step peak{', +save peak' if args.save else ''}")
    base = None
    for name in args.layouts:
        layout = tuple(int(x) for x in name.split("x"))
        res = run_layout(args, layout)
        base = base or (res["tok_s"] if layout == (1, 1, 1) else None)
        ratio = f"{res['tok_s'] / base:.2f}x" if base else "-"
        mem = " | ".join(" / ".join(f"{v:.1f}" for v in vals)
                         for vals in zip(*(res[k] for k in ("kept", "step", "save") if k in res),
                                         strict=True))
        print(f"{name:<16}{res['tok_s']:>10.0f}{ratio:>11}  {mem}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
