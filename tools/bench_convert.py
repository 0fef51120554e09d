"""Peak memory of the importers on a synthetic model (docs/convert.md, "Measured").

    python tools/bench_convert.py [--hidden 1024 --layers 12 --parts 4] [--out DIR]

1. metaseq2engine: writes a random fp16 metaseq checkpoint (N parts, FSDP flat parameters),
   then converts it in one process and under torchrun with N ranks (--tp N), and prints each
   run's wall time and the largest resident set of any one process.
2. HFInit: materialises the model in bf16 from an fp16 HF safetensors directory, once reading
   every local slice first in fp32 (what HFInit did before) and once with HFInit (one slice
   per parameter, in the parameter's dtype), each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_metaseq(path: Path, hidden: int, layers: int, heads: int, parts: int,
                  vocab: int = 50272, positions: int = 2048) -> None:
    """Random fp16 weights in the metaseq layout (see docs/convert.md), one flat parameter per
    FSDP module, no padding."""
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    ffn = 4 * hidden
    cfg = {"model": {"decoder_attention_heads": heads, "decoder_embed_dim": hidden,
                     "decoder_layers": layers, "activation_fn": "relu"}}
    # Replicated tensors are the same in every part (the converter checks it).
    shared = {"positions": rnd(positions + 2, hidden),
              **{f"{i}.{b}": rnd(hidden) for i in range(layers) for b in ("out", "fc2")}}
    for r in range(parts):
        groups = {"": {"decoder.embed_tokens.weight": rnd(vocab // parts, hidden),
                       "decoder.embed_positions.weight": shared["positions"],
                       "decoder.layer_norm.weight": torch.ones(hidden).half(),
                       "decoder.layer_norm.bias": torch.zeros(hidden).half()}}
        for i in range(layers):
            groups[f"decoder.layers.{i}"] = {
                "self_attn.qkv_proj.weight": rnd(3 * hidden // parts, hidden),
                "self_attn.qkv_proj.bias": rnd(3 * hidden // parts),
                "self_attn.out_proj.weight": rnd(hidden, hidden // parts),
                "self_attn.out_proj.bias": shared[f"{i}.out"],
                "self_attn_layer_norm.weight": torch.ones(hidden).half(),
                "self_attn_layer_norm.bias": torch.zeros(hidden).half(),
                "fc1.weight": rnd(ffn // parts, hidden), "fc1.bias": rnd(ffn // parts),
                "fc2.weight": rnd(hidden, ffn // parts), "fc2.bias": shared[f"{i}.fc2"],
                "final_layer_norm.weight": torch.ones(hidden).half(),
                "final_layer_norm.bias": torch.zeros(hidden).half()}
        model, meta = {}, []
        for fsdp_path, params in groups.items():
            key = f"{fsdp_path}.flat_param_0" if fsdp_path else "flat_param_0"
            model[key] = torch.cat([t.reshape(-1) for t in params.values()])
            meta.append({"fsdp_path": fsdp_path, "shared_param_info": [], "params": {
                "flat_param_0": {"names": list(params), "shapes": [t.shape for t in
                                                                   params.values()],
                                 "numels": [t.numel() for t in params.values()],
                                 "padding": 0}}})
        torch.save({"model": model, "cfg": cfg,
                    "shard_metadata": {"param_metadata": meta, "buffer_names": []}},
                   path / f"checkpoint_1_4000.pt-model_part-{r}.pt")
        del groups, model


PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN)"
        ".ru_maxrss)")


def measured(argv: list[str]) -> tuple[float, float]:
    """(seconds, largest resident set of any one process of the run, in GiB), the run started
    from a fresh process so that earlier runs do not count."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *argv], check=True, cwd=ROOT, env=env,
                         capture_output=True, text=True).stdout
    return round(time.perf_counter() - start, 1), round(int(out.split()[-1]) / 2**20, 2)


HFINIT_CASE = """
import resource, sys, torch
from optiml_engine.distributed.state import ParallelGrid
from optiml_engine.model.hf_shards import _Reader, local_weights
from optiml_engine.model.meta_init import hf_meta_model, materialize
model, source = hf_meta_model(sys.argv[1], 0.0)
model.to(torch.bfloat16)
if sys.argv[2] == "eager-fp32":  # every local slice read first, in fp32, then cast
    reader = _Reader(source.path)
    everything = local_weights(reader, source.config, 0, 1, 0, 1, torch.float32)
    def source(name, param, layout, stats):
        return everything.pop(name)[0]
materialize(model, source, ParallelGrid())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def hfinit_peak(hf_dir: Path, mode: str) -> float:
    """The peak resident set (GiB) of a fresh process materialising the model."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", HFINIT_CASE, str(hf_dir), mode], check=True,
                         cwd=ROOT, env=env, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--out", help="working directory (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-convert-"))
    src = work / "metaseq"
    write_metaseq(src, args.hidden, args.layers, args.heads, args.parts)
    results = {}
    py = [sys.executable, "-m", "optiml_engine", "convert", "metaseq2engine", "--ckpt", str(src)]
    results["one_process"] = measured([*py, "--out", str(work / "ck1")])
    results[f"torchrun_{args.parts}_ranks"] = measured(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(args.parts), "-m", "optiml_engine", "convert", "metaseq2engine", "--ckpt",
         str(src), "--out", str(work / "ckN"), "--tp", str(args.parts)])
    # The same weights as an fp16 HF directory, for HFInit.
    from optiml_engine.model.convert import load_engine_model

    model = load_engine_model(work / "ck1")
    results["params"] = sum(p.numel() for p in model.parameters())
    results["fp32_model_gib"] = round(results["params"] * 4 / 2**30, 2)
    model.half().save_hf(work / "hf")
    del model
    results["hfinit_bf16_peak_gib"] = {mode: round(hfinit_peak(work / "hf", mode), 2)
                                       for mode in ("eager-fp32", "hfinit")}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
