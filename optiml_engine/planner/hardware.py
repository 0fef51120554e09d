"""The GPUs and networks the planner knows: memory, peak rates, bandwidths.

Datasheet figures (NVIDIA, dense, without sparsity) for memory and peaks; the bus bandwidths are
what NCCL's all-reduce reaches in practice (its "busbw", roughly 75-80% of the link rate), so
that a ring all-reduce of B bytes over n ranks takes 2 (n - 1) / n * B / busbw:

    intra   NVLink inside a node (A100: NVLink 3, 600 GB/s both ways; H100/H200: NVLink 4, 900)
    inter   per GPU across nodes: one InfiniBand NIC per GPU (A100 nodes: HDR 200 Gb/s;
            H100/H200 nodes: NDR 400 Gb/s)

`matmul_efficiency` is the fraction of the peak the model's GEMMs reach (cuBLAS reaches 70-85% on
large bf16 GEMMs; tensor-parallel shards are narrower, so the low end). It is an assumption, not
a measurement of this repository (no GPU measured it yet): `optiml plan --matmul-efficiency`
overrides it. The bf16 peaks are model/flops.py's PEAK_TFLOPS, the table MFU logging uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from optiml_engine.errors import OptimlError
from optiml_engine.model.flops import PEAK_TFLOPS


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # what torch.cuda.mem_get_info reports as total
    peak_tflops: float  # dense bf16 / fp16 tensor cores
    fp32_tflops: float  # fp32 without TF32 (the engine's fp32 recipes)
    hbm_gbps: float  # memory bandwidth, GB/s (memory-bound elementwise work)
    intra_busbw_gbps: float  # NCCL all-reduce bus bandwidth inside a node, GB/s
    inter_busbw_gbps: float  # the same across nodes, per GPU, GB/s
    matmul_efficiency: float = 0.7


GPUS: dict[str, GPU] = {
    "a100-40gb": GPU("A100-SXM4-40GB", 39.4, PEAK_TFLOPS["a100-40gb"], 19.5, 1555.0, 230.0, 23.0),
    "a100-80gb": GPU("A100-SXM4-80GB", 79.2, PEAK_TFLOPS["a100-80gb"], 19.5, 2039.0, 230.0, 23.0),
    "h100": GPU("H100-SXM5-80GB", 79.1, PEAK_TFLOPS["h100"], 67.0, 3350.0, 370.0, 45.0),
    "h200": GPU("H200-SXM-141GB", 139.8, PEAK_TFLOPS["h200"], 67.0, 4800.0, 370.0, 45.0),
}

# Of a GPU's memory, what the allocator can give to tensors: the CUDA context, NCCL's buffers
# and fragmentation take the rest (10%, the figure this planner has always used).
USABLE_FRACTION = 0.9


def gpu(name: str) -> GPU:
    if name not in GPUS:
        raise OptimlError("optiml plan --gpu", f"unknown GPU {name!r}",
                          f"choose one of: {', '.join(GPUS)}")
    return GPUS[name]
