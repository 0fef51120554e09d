"""Tokens per second and per-rank peak memory of each parallel layout, against one process.

    python tools/bench_parallel.py                       # CPU (gloo), the demo model
    python tools/bench_parallel.py --layouts 1x1x1 2x1x1 --hidden 256 --layers 8

A layout is TPxPPxDP. Each runs on TP*PP*DP fresh processes (gloo on CPU; NCCL with one GPU
per rank when a CUDA device per rank exists) with synthetic packed batches of the same global
batch, so every layout processes the same tokens per step. Peak memory is the process's peak
resident set on CPU (torch's runtime included) and torch.cuda.max_memory_allocated on GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optiml_engine.config import (  # noqa: E402
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
)
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
    torch.manual_seed(0)
    model = OPTForCausalLM(cfg).to(device)
    par = ParallelConfig(tp=tp, pp=pp, sp=args.sp and tp > 1, zero1=args.zero1 and dp > 1)
    engine = Engine(model, par, OptimConfig(lr=1e-4), PrecisionConfig(dtype=args.dtype))
    micro = batches(args.global_batch, args.seq, args.vocab, state.dp_rank(), dp,
                    args.micro_batch, device)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
        engine.train_step(micro, 1e-4, 1.0)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = args.global_batch * args.seq * args.steps
    Path(out, f"{rank}.json").write_text(json.dumps({"tok_s": tokens / seconds,
                                                     "peak_mb": peak / 2**20}))
    state.destroy()


def run_layout(args, layout) -> dict:
    world = layout[0] * layout[1] * layout[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, port, args, layout, out), nprocs=world, join=True)
        ranks = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]
    return {"tok_s": min(r["tok_s"] for r in ranks), "peak_mb": [r["peak_mb"] for r in ranks]}


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
    p.add_argument("--zero1", action="store_true", help="ZeRO-1 where DP > 1")
    args = p.parse_args(argv)
    print(f"model {args.hidden}d x {args.layers} layers, vocab {args.vocab}, seq {args.seq}, "
          f"{args.global_batch} samples/step in micro-batches of {args.micro_batch}, "
          f"{args.dtype}, {args.device}, {args.threads} thread(s)/rank, "
          f"sp={'on' if args.sp else 'off'}, zero1={'on' if args.zero1 else 'off'}")
    print(f"{'layout TPxPPxDP':<16}{'tokens/s':>10}{'vs 1 proc':>11}  peak MB per rank")
    base = None
    for name in args.layouts:
        layout = tuple(int(x) for x in name.split("x"))
        res = run_layout(args, layout)
        base = base or (res["tok_s"] if layout == (1, 1, 1) else None)
        ratio = f"{res['tok_s'] / base:.2f}x" if base else "-"
        peaks = " ".join(f"{m:.0f}" for m in res["peak_mb"])
        print(f"{name:<16}{res['tok_s']:>10.0f}{ratio:>11}  {peaks}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
