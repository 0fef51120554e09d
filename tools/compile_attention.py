"""Compile the Triton attention kernels for a GPU architecture, on a machine without a GPU.

A check that every kernel variant (masking, dropout, head dims) and every autotune candidate
lowers to machine code for the target and fits its shared memory; it runs nothing. Usage:

    python tools/compile_attention.py [--arch 90] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from optiml_engine.kernels import attention_configs as tuning  # noqa: E402
from optiml_engine.kernels import triton_attention as ta  # noqa: E402

SCALARS = {"qk_scale", "sm_scale", "dropout_p", "drop_scale"}
FP32_BUFFERS = {"LSE", "DELTA"}
INT_BUFFERS = {"SEG_START": "*i32", "SEG_END": "*i32", "SEED": "*i64"}
KERNELS = [(ta._attn_fwd, tuning.FORWARD), (ta._attn_bwd_dkdv, tuning.BACKWARD_DKDV),
           (ta._attn_bwd_dq, tuning.BACKWARD_DQ)]


def signature(fn, dtype: str) -> dict[str, str]:
    """Tensors are the upper-case non-constexpr arguments but H, S, D; scalars are lower case."""
    sig = {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name in INT_BUFFERS:
            sig[name] = INT_BUFFERS[name]
        elif name in FP32_BUFFERS:
            sig[name] = "*fp32"
        elif name in SCALARS:
            sig[name] = "fp32"
        elif name.islower() or name in ("H", "S", "D"):
            sig[name] = "i32"
        else:
            sig[name] = f"*{dtype}"
    return sig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    args = parser.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    worst = 0
    for fn, configs in KERNELS:
        for cfg in configs:
            for d_pad in (64, 128):
                for docs, dropout in ((True, False), (True, True), (False, False)):
                    consts = dict(HAS_DOCS=docs, HAS_DROPOUT=dropout, D_PAD=d_pad,
                                  DOT_PREC="tf32", UPCAST=False, **cfg.kwargs)
                    src = ASTSource(fn=fn, signature=signature(fn, args.dtype), constexprs=consts)
                    kernel = triton.compile(src, target=target, options={
                        "num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
                    worst = max(worst, kernel.metadata.shared)
            print(f"{fn.__name__} {cfg.kwargs} warps {cfg.num_warps} stages {cfg.num_stages}: ok")
    print(f"all variants compile for sm_{args.arch} ({args.dtype}); "
          f"largest shared memory {worst / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
