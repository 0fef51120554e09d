"""The worker of the layout tests: every layout of a list runs on one set of processes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from harness import (
    SEED,
    max_weight_error,
    micro_batches,
    optim_config,
    parallel_config,
    precision_config,
    tiny_config,
)

from optiml_engine.distributed import state
from optiml_engine.model.meta_init import meta_model
from optiml_engine.training.engine import Engine


def layout_name(layout: dict) -> str:
    return "-".join(f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in layout.items())


def reference_key(layout: dict) -> str | None:
    """Which reference run a layout is compared with: with dropout, the one drawing from the
    same per-(stage, data-parallel rank) streams (tensor parallelism has no exact reference)."""
    drop = layout.get("drop", 0.0)
    if layout.get("dtype", "fp32") != "fp32":  # compared with the same dtype on one process
        return "plain"
    if not drop:
        return "plain"
    pp, dp = (layout["pp"], layout["dp"]) if layout["tp"] == 1 else (1, 1)
    return f"pp{pp}-dp{dp}-drop{drop}"


def reference_args(key: str) -> dict:
    """reference_run's keywords for a reference_key (inverse of the above)."""
    if key == "plain":
        return {}
    pp, dp, drop = (part[len(prefix):] for part, prefix in
                    zip(key.split("-"), ("pp", "dp", "drop"), strict=True))
    return {"cfg": tiny_config(dropout=float(drop), attention_dropout=float(drop)),
            "pp": int(pp), "dp": int(dp)}


def reference_for(references: dict, layout: dict) -> dict:
    return references[reference_key(layout)]


def run_layout(rank: int, layout: dict, steps, references, micro: int) -> dict | None:
    """Train `steps` under `layout` and compare with its reference on this rank."""
    tp, pp, dp = layout["tp"], layout["pp"], layout["dp"]
    grid = state.initialize(tp, pp, world_size=tp * pp * dp)
    try:
        if not state.in_grid():
            return None
        drop = layout.get("drop", 0.0)
        cfg = tiny_config(dropout=drop, attention_dropout=drop)
        model = meta_model(cfg, SEED)  # only this rank's part is ever built
        par = parallel_config(tp, pp, layout.get("sp", False), layout.get("shard", "none"),
                              layout.get("recompute", "none"),
                              virtual_stages=layout.get("vs", 1))
        # Chunks of 7 target tokens (several per micro-batch); chunk 0: full logits.
        precision = precision_config(layout.get("dtype", "fp32"))
        engine = Engine(model, par, optim_config(), precision, SEED,
                                loss_chunk_tokens=layout.get("chunk", 7))
        losses, norms = [], []
        for step in steps:
            out = engine.train_step(micro_batches(step, grid.dp_rank, dp, micro),
                                    optim_config().lr, optim_config().clip_grad)
            losses.append(out["loss"])
            norms.append(out["grad_norm"])
        with engine.optimizer.buffers.gathered():  # zero3: the whole layers, for the check
            weight_err = max_weight_error(engine.model,
                                          reference_for(references, layout)["weights"], tp,
                                          grid.tp_rank)
        return {"losses": losses, "norms": norms, "weight_err": weight_err,
                "params": sorted(n for n, _ in engine.model.named_parameters())}
    finally:
        state.destroy(keep_process_group=True)
        dist.barrier()


def worker(rank: int, layouts: list[dict], data_path: str, out_dir: str) -> None:
    data = torch.load(data_path, weights_only=True)
    results = {}
    for layout in layouts:
        res = run_layout(rank, layout, data["steps"], data["references"], data["micro"])
        if res is not None:
            results[layout_name(layout)] = res
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
