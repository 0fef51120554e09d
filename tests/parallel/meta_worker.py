"""Worker of test_meta_init.py: models built on the meta device under several layouts, on one
set of gloo processes."""

from __future__ import annotations

import gc
import json
import resource
from pathlib import Path

import torch
import torch.distributed as dist
from harness import SEED, optim_config, parallel_config, precision_config, tiny_config

from optiml_engine.distributed import checkpoint as pckpt
from optiml_engine.distributed import state
from optiml_engine.model import OPTForCausalLM
from optiml_engine.model import meta_init as pinit
from optiml_engine.training.engine import Engine

# Full size ~210 MB in fp32, a TP2 x PP2 rank's share ~1/4 of it.
BIG = dict(vocab_size=4096, hidden_size=512, num_layers=16, num_heads=8, ffn_hidden_size=2048)


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark (Linux >= 4.0), so an earlier transient peak (imports,
    unpickling) cannot count as growth; where it is refused the bound only gets looser."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def done() -> None:
    state.destroy(keep_process_group=True)
    dist.barrier()


def memory_case(big_cfg) -> dict:
    """Peak RSS growth while a TP2 x PP2 rank builds its part of BIG from the meta device:
    the peak after minus the resident set before (the peak reset just before)."""
    g = state.initialize(2, 2, world_size=4)
    # The first meta-device use imports torch's meta kernels (~100 MB of modules): not ours.
    pinit.shard_model(pinit.meta_model(tiny_config(), SEED), g, state.tp_group(),
                      sequence_parallel=True)
    gc.collect()
    reset_peak_rss()
    before = rss_bytes()
    model = pinit.meta_model(big_cfg, SEED)
    _, stats = pinit.shard_model(model, g, state.tp_group(), sequence_parallel=True)
    growth = peak_rss_bytes() - before
    local = sum(p.numel() * p.element_size() for p in model.parameters())
    checksum = {n: float(p.detach().double().sum()) for n, p in model.named_parameters()}
    del model
    done()
    return {"growth": growth, "local": local, "stats_local": stats.local_bytes,
            "peak_full": stats.peak_full_bytes, "checksum": checksum}


def weights_case(layout: dict) -> dict | None:
    """Meta-built engine vs the old full-build engine vs the one-process model's slices."""
    tp, pp, dp, vs = layout["tp"], layout["pp"], layout["dp"], layout.get("vs", 1)
    g = state.initialize(tp, pp, world_size=tp * pp * dp)
    try:
        if not state.in_grid():
            return None
        par = parallel_config(tp, pp, layout.get("sp", False), virtual_stages=vs)
        meta = Engine(pinit.meta_model(tiny_config(), SEED), par, optim_config(),
                              precision_config(), SEED)
        torch.manual_seed(SEED)
        full = Engine(OPTForCausalLM(tiny_config()), par, optim_config(),
                              precision_config(), SEED)
        torch.manual_seed(SEED)
        ref = OPTForCausalLM(tiny_config()).state_dict()
        mismatched = []
        for (name, p), (name2, q) in zip(meta.model.named_parameters(),
                                         full.model.named_parameters(), strict=True):
            dim = getattr(p, "tp_shard_dim", None)
            want = ref[name] if dim is None else ref[name].chunk(tp, dim)[g.tp_rank]
            if name != name2 or not (torch.equal(p, q) and torch.equal(p, want)):
                mismatched.append(name)
        return {"names": [n for n, _ in meta.model.named_parameters()],
                "mismatched": mismatched, "tensors": meta.init_stats.tensors}
    finally:
        done()


def hf_case(hf_dir: str, layout: dict) -> dict | None:
    """An engine whose source is a Hugging Face directory: this rank's slices, read without
    loading the whole checkpoint, equal the slices of `OPTForCausalLM.from_hf`."""
    from optiml_engine.model import hf_io

    tp, pp, dp, vs = layout["tp"], layout["pp"], layout["dp"], layout.get("vs", 1)
    g = state.initialize(tp, pp, world_size=tp * pp * dp)
    try:
        if not state.in_grid():
            return None
        calls = {"n": 0}
        real = hf_io.read_hf_weights

        def counting(*args, **kwargs):
            calls["n"] += 1
            return real(*args, **kwargs)

        hf_io.read_hf_weights = counting
        try:
            model, source = pinit.hf_meta_model(hf_dir, dropout=0.0)
            par = parallel_config(tp, pp, layout.get("sp", False), virtual_stages=vs)
            engine = Engine(model, par, optim_config(), precision_config(), SEED,
                                    init=source)
        finally:
            hf_io.read_hf_weights = real
        want = OPTForCausalLM.from_hf(hf_dir).state_dict()
        mismatched = [n for n, p in engine.model.named_parameters()
                      if not torch.equal(p, want[n] if getattr(p, "tp_shard_dim", None) is None
                                         else want[n].chunk(tp, p.tp_shard_dim)[g.tp_rank])]
        return {"full_reads": calls["n"], "mismatched": mismatched,
                "tensors": engine.init_stats.tensors, "left": len(source.plan)}
    finally:
        done()


def resume_case(out_dir: str) -> dict:
    """Save a TP2 x PP2 meta-built engine, reload under TP4 from an empty meta model with the
    random init counted: it must never run, and the weights must equal the saved ones."""
    calls = {"n": 0}
    real = pinit.initial_value

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    pinit.initial_value = counting
    try:
        state.initialize(2, 2, world_size=4)
        saved = Engine(pinit.meta_model(tiny_config(), SEED),
                               parallel_config(2, 2, True), optim_config(),
                               precision_config(), SEED)
        fresh_calls = calls["n"]
        path = Path(out_dir) / "resume-ckpt"
        pckpt.save(path, saved.tensors(), {"step": 0, **saved.meta()})
        done()
        g = state.initialize(4, 1, world_size=4)
        calls["n"] = 0
        engine = Engine(pinit.meta_model(tiny_config(), SEED), parallel_config(4, 1),
                                optim_config(), precision_config(), SEED,
                                init=pinit.EmptyInit())
        engine.load(path)
        resume_calls = calls["n"]
        torch.manual_seed(SEED)
        ref = OPTForCausalLM(tiny_config()).state_dict()
        mismatched = [n for n, p in engine.model.named_parameters()
                      if not torch.equal(p, ref[n] if getattr(p, "tp_shard_dim", None) is None
                                         else ref[n].chunk(4, p.tp_shard_dim)[g.tp_rank])]
        done()
    finally:
        pinit.initial_value = real
    return {"fresh_calls": fresh_calls, "resume_calls": resume_calls, "mismatched": mismatched}


def worker(rank: int, big: dict, layouts: dict, hf_dirs: list[str], out_dir: str) -> None:
    torch.set_num_threads(1)
    results = {"memory": memory_case(tiny_config(**big)), "weights": {}, "hf": {}}
    for name, layout in layouts.items():
        res = weights_case(layout)
        if res is not None:
            results["weights"][name] = res
    for hf_dir in hf_dirs:
        for name in ("tp2pp2sp", "pp2vs2dp2"):
            res = hf_case(hf_dir, layouts[name])
            if res is not None:
                results["hf"][f"{Path(hf_dir).name}-{name}"] = res
    results["resume"] = resume_case(out_dir)
    Path(out_dir, f"meta{rank}.json").write_text(json.dumps(results))
