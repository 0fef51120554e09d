"""The steps of the GPU check (`tools/gpu_check.sh`), each run in its own time-boxed process.

    python -m optiml_engine.benchmarks.gpu_check STEP --out DIR [--dry-run]

STEP is one of `env`, `tests`, `attention`, `cross-entropy`, `adamw`, `train`, `nccl`: each
measures, then merges its section and its headline figures into DIR/gpu_check.json at once, so
a step that fails or runs out of time leaves every earlier figure in place. `record NAME RC
SECONDS BOX` notes how the script saw a step end (for `tests` it also reads DIR/pytest.log);
`report` fills every figure key (null where nothing was measured) and writes DIR/gpu_check.md,
the table for docs/bench/kernels.md.

`--dry-run` runs the same steps on a CPU at tiny sizes: the Triton kernels under
TRITON_INTERPRET=1, gloo instead of NCCL, the transformers loop on the CPU. Its figures prove
the plumbing, not any speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
JSON_NAME, MD_NAME, PYTEST_LOG = "gpu_check.json", "gpu_check.md", "pytest.log"
DIMS = (64, 80, 128)

FIGURE_KEYS = [
    "build_cuda_ops",
    "tests_passed", "tests_failed", "tests_skipped", "tests_errors",
    *[f"attention_d{d}_{k}" for d in DIMS for k in (
        "triton_ms", "triton_tflops", "triton_vs_sdpa_masked", "triton_vs_sdpa_per_example")],
    "attention_d64_dropout_triton_vs_sdpa_masked",
    "attention_d64_dropout_triton_vs_sdpa_per_example",
    "ce_triton_vs_unfused_speed", "ce_triton_vs_unfused_memory",
    "ce_linear_triton_vs_unfused_speed", "ce_linear_triton_vs_unfused_memory",
    "adamw_cuda_ms", "adamw_torch_fused_ms", "adamw_cuda_vs_torch_fused",
    "adamw_triton_vs_torch_fused", "adamw_cuda_gbps",
    "train_engine_target_tokens_per_s", "train_engine_tokens_per_s", "train_engine_mfu",
    "train_hf_target_tokens_per_s", "train_hf_tokens_per_s", "train_hf_mfu",
    "train_engine_vs_hf", "train_packing_efficiency", "train_hf_padding_efficiency",
    "matmul_bf16_tflops",
    "nccl_backend", "nccl_collectives_ok", "nccl_engine_step_ok",
    "nccl_step_matches_no_process_group",
]

NOTES = [
    "Multi-rank NCCL is untested: one GPU holds one rank (NCCL refuses two ranks on one GPU). "
    "The nccl step runs the engine under a 1-rank NCCL group and the collectives the layouts "
    "use on it; the engine skips collectives over groups of one, so the step points the grid's "
    "world and model-parallel groups at that group to send its gradient-norm and parameter-count "
    "all-reduces through NCCL.",
    "MFU counts the work the examples need (dense layers on every example token, causal "
    "attention inside each example, logits of target tokens only) x3 for forward + backward, "
    "over the H200's bf16 rate measured in this workplace (790 TFLOP/s, KINDS.md); "
    "matmul_bf16_tflops is the rate this run measured.",
]

# --- sizes ------------------------------------------------------------------------------------

# (batch, seq, heads, head dim, examples per row, dtype, dropout), as kernels.GPU_ATTENTION.
DRY_ATTENTION = [(1, 64, 2, d, 4, "fp32", 0.0) for d in DIMS] + [(1, 64, 2, 64, 4, "fp32", 0.1)]

# The end-to-end step: OPT-IML 1.3B's recipe at random init, bf16, packed 2048-token samples,
# byte-level examples of an instruction-like length profile, no recomputation.
GPU_TRAIN = dict(recipe=ROOT / "recipes/opt-iml-1.3b.yaml", steps=20, warmup=2, examples=3000,
                 seq=2048, hf_micro_batch=8, overrides=[
                     "model.hf_path=null", "data.tokenizer=byte", "data.seq_length=2048",
                     "precision.dtype=bf16", "parallel.recompute=none", "parallel.sp=false",
                     "parallel.shard=none", "train.micro_batch_size=4",
                     "train.global_batch_size=8", "checkpoint.load=null"])
DRY_TRAIN = dict(recipe=None, steps=2, warmup=1, examples=200, seq=256, hf_micro_batch=8,
                 overrides=[
                     "model.vocab_size=512", "model.hidden_size=64", "model.num_layers=2",
                     "model.num_heads=2", "model.max_position_embeddings=256",
                     "data.tokenizer=byte", "data.seq_length=256", "precision.dtype=bf16",
                     "train.micro_batch_size=2", "train.global_batch_size=4"])
TRAIN_ALWAYS = ["model.dropout=0.0", "checkpoint.dir=null", "logging.dir=null", "train.steps=1000",
                "optim.warmup_steps=0"]

# The NCCL step: one engine step of a 125M-shaped model (a tiny one in the dry run).
GPU_NCCL = ["model.preset=125m", "data.seq_length=512"]
DRY_NCCL = ["model.vocab_size=264", "model.hidden_size=32", "model.num_layers=2",
            "model.num_heads=2", "model.max_position_embeddings=128", "data.seq_length=64"]
NCCL_ALWAYS = ["data.synthetic=true", "data.synthetic_examples=200", "data.tokenizer=byte",
               "precision.dtype=bf16", "model.dropout=0.0", "train.micro_batch_size=2",
               "train.global_batch_size=2", "train.steps=10", "optim.warmup_steps=0"]

# --- the JSON ---------------------------------------------------------------------------------


def load(out: Path) -> dict:
    path = out / JSON_NAME
    if path.is_file():
        return json.loads(path.read_text())
    return {"schema": 1, "figures": {}, "steps": {}, "notes": NOTES}


def merge(out: Path, mode: str, section: str | None = None, data=None,
          figures: dict | None = None) -> None:
    """Write `data` under `section` and `figures` into the JSON (atomically)."""
    doc = load(out)
    doc["mode"] = mode
    if section is not None:
        doc[section] = data
    doc["figures"].update(figures or {})
    write(out, doc)


def write(out: Path, doc: dict) -> None:
    tmp = out / (JSON_NAME + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, out / JSON_NAME)


def ratio(num, den):
    """num / den to 4 significant digits, or None when either is missing or zero."""
    return float(f"{num / den:.4g}") if num and den else None


def _error(errors: list, what, exc: BaseException) -> None:
    traceback.print_exc()
    errors.append(f"{what}: {type(exc).__name__}: {str(exc)[:500]}")
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - reporting must not fail
        pass


# --- steps ------------------------------------------------------------------------------------


def _version(module: str):
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - absent or broken: say so
        return None


def step_env(out: Path, dry: bool) -> None:
    import platform
    import subprocess

    import torch

    from optiml_engine.kernels import dispatch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "triton": _version("triton"),
           "transformers": _version("transformers"), "numpy": _version("numpy"),
           "cuda_available": torch.cuda.is_available(),
           "triton_interpret": os.environ.get("TRITON_INTERPRET"),
           "cuda_home": os.environ.get("CUDA_HOME"),
           "cuda_ops_built": dispatch.cuda_ops_built(),
           "optional": {m: dispatch._importable(m) for m in
                        ("flash_attn", "apex", "xdist", "rouge_score", "pybind11")},
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        nccl = torch.cuda.nccl.version()
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count,
                   nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl))
    else:
        env["device"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    for name, cmd in (("nvcc", ["nvcc", "--version"]), ("commit", ["git", "rev-parse", "HEAD"]),
                      ("gpu", ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,"
                               "clocks.max.sm,temperature.gpu", "--format=csv,noheader"])):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                  cwd=ROOT).stdout.strip()
            env[name] = text.splitlines()[-1] if text else None
        except (OSError, subprocess.SubprocessError):
            env[name] = None
    try:  # found is not enough: the built op must load against this torch
        import optiml_engine._cuda_ops  # noqa: F401
        env["cuda_ops_import"] = "ok"
    except Exception as exc:  # noqa: BLE001 - not built, or built wrong: say which
        env["cuda_ops_import"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(env, indent=1))
    merge(out, mode(dry), "env", env, {"build_cuda_ops": env["cuda_ops_import"] == "ok"})


def _gpu_marked_files(exclude: tuple[str, ...]) -> list[str]:
    files = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(exclude) and "pytest.mark.gpu" in path.read_text():
            files.append(rel)
    return files


def step_tests(out: Path, dry: bool, workers: int) -> int:
    """`-m gpu` everywhere plus tests/kernels and tests/model whole (the dry run: `-m gpu`
    there only, which skips on a CPU). The log goes to DIR/pytest.log; `record` reads it."""
    import subprocess

    from optiml_engine.kernels import dispatch

    dirs = ["tests/kernels", "tests/model"]
    base = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    if dry:
        runs = [base + ["-m", "gpu", *dirs]]
    else:
        xdist = ["-n", str(workers), "--dist", "loadfile"] \
            if workers > 1 and dispatch._importable("xdist") else []
        runs = [base + xdist + dirs]
        others = _gpu_marked_files(tuple(d + "/" for d in dirs))
        if others:
            runs.append(base + ["-m", "gpu", *others])
    rc = 0
    with open(out / PYTEST_LOG, "a") as log:
        for cmd in runs:
            log.write("$ " + " ".join(cmd[1:]) + "\n")
            log.flush()
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            rc = max(rc, 0 if code == 5 else code)  # 5: nothing collected
    return rc


SUMMARY = re.compile(r"^=*\s*((?:\d+ [a-z]+(?:, )?)+) in [\d.]+s")


def parse_pytest_log(path: Path) -> dict:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    summaries, failures = [], []
    text = path.read_text(errors="replace") if path.is_file() else ""
    for line in text.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            failures.append(line[:300])
        m = SUMMARY.match(line.strip())
        if m:
            summaries.append(m.group(0).strip("= "))
            for n, word in re.findall(r"(\d+) ([a-z]+)", m.group(1)):
                key = {"error": "errors"}.get(word, word)
                if key in counts:
                    counts[key] += int(n)
    return {**counts, "summaries": summaries, "failures": failures[:50],
            "complete": bool(summaries)}


def step_record(out: Path, dry: bool, name: str, rc: int, seconds: float, box: int) -> None:
    """How the script saw step `name` end: rc 124/137 is its time box, -1 not started."""
    doc = load(out)
    doc["mode"] = mode(dry)
    doc["steps"][name] = {"rc": rc, "seconds": round(seconds, 1), "box_s": box,
                          "timed_out": rc in (124, 137), "skipped": rc == -1}
    if name == "tests":
        tests = doc["tests"] = parse_pytest_log(out / PYTEST_LOG)
        if tests["complete"]:
            doc["figures"].update({f"tests_{k}": tests[k]
                                   for k in ("passed", "failed", "skipped", "errors")})
    write(out, doc)


def _rows_by_backend(rows: list[dict]) -> dict:
    return {r["backend"]: r for r in rows}


def step_attention(out: Path, dry: bool) -> None:
    from optiml_engine.benchmarks import kernels

    configs = DRY_ATTENTION if dry else kernels.GPU_ATTENTION
    rows, errors, figures = [], [], {}
    for cfg in configs:
        try:
            found = kernels.bench_attention(dry, [cfg], interpret=dry)
        except Exception as exc:  # noqa: BLE001 - one shape failing keeps the others
            _error(errors, cfg, exc)
            continue
        kernels.add_speedups(found)
        rows += found
        by = _rows_by_backend(found)
        dim, drop = cfg[3], cfg[6]
        tri = by.get("triton", {})
        prefix = f"attention_d{dim}" + ("_dropout" if drop else "")
        figures[f"{prefix}_triton_vs_sdpa_masked"] = ratio(by["sdpa_masked"]["ms"], tri.get("ms"))
        figures[f"{prefix}_triton_vs_sdpa_per_example"] = ratio(
            by["sdpa_per_example"]["ms"], tri.get("ms"))
        if not drop:
            figures[f"{prefix}_triton_ms"] = tri.get("ms")
            figures[f"{prefix}_triton_tflops"] = tri.get("tflops")
        merge(out, mode(dry), "attention", {"machine": kernels.machine(), "rows": rows,
                                            "errors": errors}, figures)
        print(*(", ".join(f"{k}={v}" for k, v in r.items()) for r in found), sep="\n")
    merge(out, mode(dry), "attention", {"machine": kernels.machine(), "rows": rows,
                                        "errors": errors}, figures)


def step_cross_entropy(out: Path, dry: bool) -> None:
    from optiml_engine.benchmarks import kernels

    size = dict(tokens=64, hidden=64, vocab=1000) if dry else {}
    errors, rows = [], []
    try:
        rows = kernels.bench_cross_entropy(dry, targets=0.7, interpret=dry, **size)
    except Exception as exc:  # noqa: BLE001 - recorded, the script goes on
        _error(errors, "cross-entropy", exc)
    kernels.add_speedups(rows)
    by = _rows_by_backend(rows)
    base = by.get("torch_unfused", {})
    figures = {}
    for key, backend in (("ce_triton", "triton"), ("ce_linear_triton",
                                                   "linear_ce_triton_chunk4096")):
        row = by.get(backend, {})
        figures[f"{key}_vs_unfused_speed"] = ratio(base.get("ms"), row.get("ms"))
        figures[f"{key}_vs_unfused_memory"] = ratio(row.get("peak_extra_mb"),
                                                     base.get("peak_extra_mb"))
    print(*(", ".join(f"{k}={v}" for k, v in r.items()) for r in rows), sep="\n")
    merge(out, mode(dry), "cross_entropy", {"machine": kernels.machine(), "rows": rows,
                                            "errors": errors}, figures)


def step_adamw(out: Path, dry: bool) -> None:
    from optiml_engine.benchmarks import kernel_cases, kernels

    layout = (kernel_cases.opt_layer_shapes(32, 1, 512, 66), "bf16",
              "dry-run OPT layout, 1 layer, width 32") if dry else None
    errors, rows = [], []
    try:
        rows = kernels.bench_adamw(dry, layout, interpret=dry)
    except Exception as exc:  # noqa: BLE001 - recorded, the script goes on
        _error(errors, "adamw", exc)
    kernels.add_speedups(rows)
    by = _rows_by_backend(rows)
    fused = by.get("torch.optim(fused)", {})
    figures = {"adamw_cuda_ms": by.get("cuda", {}).get("ms"),
               "adamw_torch_fused_ms": fused.get("ms"),
               "adamw_cuda_vs_torch_fused": ratio(fused.get("ms"), by.get("cuda", {}).get("ms")),
               "adamw_triton_vs_torch_fused": ratio(fused.get("ms"),
                                                    by.get("triton", {}).get("ms")),
               "adamw_cuda_gbps": by.get("cuda", {}).get("gbps")}
    print(*(", ".join(f"{k}={v}" for k, v in r.items()) for r in rows), sep="\n")
    merge(out, mode(dry), "adamw", {"machine": kernels.machine(), "rows": rows,
                                    "errors": errors}, figures)


def write_instruction_jsonl(path: Path, n: int, capacity: int, seed: int = 0) -> Path:
    """n byte-level {src, tgt} records (one token per character) whose lengths follow the
    packing benchmark's instruction-like profile; targets short (median 12 tokens)."""
    import numpy as np

    from optiml_engine.benchmarks.packing import instruction_like_lengths

    rng = np.random.default_rng(seed)
    # The profile of 2048-token samples; a shorter capacity (the dry run) clips the tail.
    lengths = np.minimum(instruction_like_lengths(rng, n, max(capacity, 2048)), capacity)
    tgt = np.clip(rng.lognormal(np.log(12), 1.0, n).astype(np.int64), 1, lengths - 3)
    src = lengths - 2 - tgt  # + two </s>: the example fills `lengths` tokens
    with open(path, "w") as f:
        for s, t in zip(src.tolist(), tgt.tolist(), strict=True):
            chars = rng.integers(97, 123, s + t).astype(np.uint8)
            chars[rng.random(s + t) < 0.15] = 32  # spaces between "words"
            text = chars.tobytes().decode("ascii")
            f.write(json.dumps({"src": text[:s], "tgt": text[s:]}) + "\n")
    return path


def step_train(out: Path, dry: bool) -> None:
    import torch

    from optiml_engine.benchmarks import train as bench_train
    from optiml_engine.config import load_recipe

    cfg = DRY_TRAIN if dry else GPU_TRAIN
    errors, figures, data = [], {}, {}
    data["recipe"] = {"base": str(cfg["recipe"]), "overrides": cfg["overrides"] + TRAIN_ALWAYS}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            jsonl = write_instruction_jsonl(Path(tmp) / "train.jsonl", cfg["examples"],
                                            cfg["seq"])
            recipe = load_recipe(cfg["recipe"], [*cfg["overrides"], f"data.train_path={jsonl}",
                                                 *TRAIN_ALWAYS])
            data.update(bench_train.measure(recipe, cfg["steps"], cfg["warmup"],
                                            cfg["hf_micro_batch"]))
            e, hf = data["engine"], data["transformers"]
            figures.update({f"train_{k}": float(f"{x:.4g}") for k, x in (
                ("engine_target_tokens_per_s", e["target_tokens_per_s"]),
                ("engine_tokens_per_s", e["tokens_per_s"]), ("engine_mfu", e["mfu"]),
                ("hf_target_tokens_per_s", hf["target_tokens_per_s"]),
                ("hf_tokens_per_s", hf["tokens_per_s"]), ("hf_mfu", hf["mfu"]),
                ("engine_vs_hf", data["ratio"]),
                ("packing_efficiency", e["packing_efficiency"]),
                ("hf_padding_efficiency", hf["padding_efficiency"]))})
        except Exception as exc:  # noqa: BLE001 - recorded; the matmul rate still comes
            _error(errors, "train", exc)
    merge(out, mode(dry), "train", {**data, "errors": errors}, figures)
    try:
        tflops = bench_train.matmul_tflops()
        figures = {"matmul_bf16_tflops": float(f"{tflops:.4g}")}
        if "engine" in data:
            data["engine"]["mfu_vs_measured_matmul"] = \
                data["model_flops"] / data["engine"]["seconds"] / (tflops * 1e12)
    except Exception as exc:  # noqa: BLE001
        _error(errors, "matmul", exc)
        figures = {}
    merge(out, mode(dry), "train", {**data, "errors": errors,
                                    "device": torch.cuda.get_device_name()
                                    if torch.cuda.is_available() else "cpu"}, figures)
    print(json.dumps(data, indent=1, default=str))


def _collectives(device) -> dict[str, str]:
    """Each collective the layouts use, on the 1-rank default group, checked by value."""
    import torch
    import torch.distributed as dist

    from optiml_engine.distributed import mappings

    def check(name, fn):
        try:
            ok = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            results[name] = "ok" if ok else "wrong value"
        except Exception as exc:  # noqa: BLE001 - each collective on its own
            results[name] = f"{type(exc).__name__}: {str(exc)[:300]}"

    results: dict[str, str] = {}
    x = torch.arange(8, dtype=torch.float32, device=device)

    def all_reduce(op, dtype):
        y = x.to(dtype).clone()
        dist.all_reduce(y, op=op)
        return torch.equal(y, x.to(dtype))

    def gather():
        y = torch.empty_like(x)
        mappings.all_gather_into_tensor(y, x)
        return torch.equal(y, x)

    def scatter():
        y = torch.empty_like(x)
        mappings.reduce_scatter_tensor(y, x.clone())
        return torch.equal(y, x)

    def broadcast():
        y = x.clone()
        dist.broadcast(y, src=0)
        return torch.equal(y, x)

    def async_bucket():  # the gradient bucketer's overlapped all-reduce
        y = x.to(torch.bfloat16).clone()
        dist.all_reduce(y, async_op=True).wait()
        return torch.equal(y, x.to(torch.bfloat16))

    def objects():
        box = [{"step": 3}]
        dist.broadcast_object_list(box, src=0)
        gathered = [None]
        dist.all_gather_object(gathered, "rank0")
        return box == [{"step": 3}] and gathered == ["rank0"]

    check("all_reduce_sum_fp32", lambda: all_reduce(dist.ReduceOp.SUM, torch.float32))
    check("all_reduce_max_fp32", lambda: all_reduce(dist.ReduceOp.MAX, torch.float32))
    check("all_reduce_sum_fp64", lambda: all_reduce(dist.ReduceOp.SUM, torch.float64))
    check("all_reduce_async_bf16", async_bucket)
    check("all_gather_into_tensor", gather)
    check("reduce_scatter_tensor", scatter)
    check("broadcast", broadcast)
    check("barrier", lambda: dist.barrier() or True)
    check("object_collectives", objects)
    return results


def _one_engine_step(recipe) -> dict:
    from optiml_engine.training.trainer import Trainer

    trainer = Trainer(recipe, verbose=False)
    try:
        trainer.model.train()
        return trainer.train_step()
    finally:
        trainer.close()


def step_nccl(out: Path, dry: bool) -> None:
    import math

    import torch
    import torch.distributed as dist

    from optiml_engine.config import load_recipe
    from optiml_engine.distributed import state

    backend = "gloo" if dry else "nccl"
    recipe = load_recipe(None, [*(DRY_NCCL if dry else GPU_NCCL), *NCCL_ALWAYS,
                                f"parallel.backend={backend}"])
    errors, data = [], {"backend": backend}
    figures = {"nccl_backend": backend, "nccl_collectives_ok": False,
               "nccl_engine_step_ok": False, "nccl_step_matches_no_process_group": None}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        data["no_process_group"] = _one_engine_step(recipe)
    except Exception as exc:  # noqa: BLE001
        _error(errors, "engine step without a process group", exc)
    if backend == "nccl":
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # no network: bootstrap on loopback
        torch.cuda.set_device(0)
    try:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    except Exception as exc:  # noqa: BLE001
        _error(errors, f"init_process_group({backend})", exc)
        merge(out, mode(dry), "nccl", {**data, "errors": errors}, figures)
        return
    try:
        data["collectives"] = _collectives(device)
        figures["nccl_collectives_ok"] = all(v == "ok" for v in data["collectives"].values())
        state.initialize(1, 1, backend)
        grid = state.grid()
        # Groups of one are None, and the engine skips them: point the world and model-parallel
        # groups at the 1-rank group so its norm and parameter-count all-reduces run on it.
        grid.groups["world"] = grid.groups["mp"] = dist.group.WORLD
        try:
            step = data["process_group"] = _one_engine_step(recipe)
            figures["nccl_engine_step_ok"] = math.isfinite(step["loss"]) and not step["skipped"]
            alone = data.get("no_process_group")
            if alone is not None:
                figures["nccl_step_matches_no_process_group"] = all(
                    math.isclose(step[k], alone[k], rel_tol=1e-6, abs_tol=1e-9)
                    for k in ("loss", "grad_norm", "target_tokens"))
        finally:
            state.destroy(keep_process_group=True)
    except Exception as exc:  # noqa: BLE001
        _error(errors, "engine step in a 1-rank group", exc)
    finally:
        dist.destroy_process_group()
    print(json.dumps(data, indent=1, default=str))
    merge(out, mode(dry), "nccl", {**data, "errors": errors}, figures)


# --- the report -------------------------------------------------------------------------------


def _fmt(x, spec: str = ".2f", suffix: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return f"{x:{spec}}{suffix}"


def _meets(x, target: float | None) -> str:
    if target is None:
        return ""
    if x is None:
        return f">= {target:g}x: n/a"
    return f">= {target:g}x: {'met' if x >= target else 'missed'}"


def report_markdown(doc: dict) -> str:
    f, env = doc["figures"], doc.get("env", {})
    dry = doc.get("mode") == "dry-run"
    title = "dry run on a CPU (tiny sizes, Triton interpreted, gloo): plumbing, not speed" \
        if dry else env.get("device", "GPU")
    lines = [f"### GPU check: {title}", "",
             f"{env.get('date', '')}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"Triton {env.get('triton')}, transformers {env.get('transformers')}, Python "
             f"{env.get('python')}; nvcc: {env.get('nvcc')}; commit "
             f"{(env.get('commit') or 'unknown')[:10]}; `tools/gpu_check.sh`"
             + (" --dry-run" if dry else "") + ".", "",
             "| check | figure | target |", "|---|---:|---|"]

    def row(what, figure, target=""):
        lines.append(f"| {what} | {figure} | {target} |")

    tests = doc.get("tests", {})
    row("`_cuda_ops` built (CUDA AdamW op)", _fmt(f.get("build_cuda_ops")), "yes")
    row("GPU tests (`-m gpu`, tests/kernels, tests/model)",
        "; ".join(tests.get("summaries", [])) or "no summary (cut off?)",
        f"0 failed: {'met' if tests.get('complete') and not f.get('tests_failed') and not f.get('tests_errors') else 'missed'}")  # noqa: E501
    for d in DIMS:
        row(f"attention fwd+bwd D{d}: Triton vs masked SDPA",
            _fmt(f.get(f"attention_d{d}_triton_vs_sdpa_masked"), ".2f", "x") +
            f" ({_fmt(f.get(f'attention_d{d}_triton_ms'), '.3f', ' ms')}, "
            f"{_fmt(f.get(f'attention_d{d}_triton_tflops'), '.1f', ' TFLOP/s')})",
            _meets(f.get(f"attention_d{d}_triton_vs_sdpa_masked"), 3))
        row(f"attention fwd+bwd D{d}: Triton vs SDPA per example (flash)",
            _fmt(f.get(f"attention_d{d}_triton_vs_sdpa_per_example"), ".2f", "x"),
            _meets(f.get(f"attention_d{d}_triton_vs_sdpa_per_example"), 0.9))
    row("attention D64, dropout 0.1: Triton vs masked SDPA / per example",
        f"{_fmt(f.get('attention_d64_dropout_triton_vs_sdpa_masked'), '.2f', 'x')} / "
        f"{_fmt(f.get('attention_d64_dropout_triton_vs_sdpa_per_example'), '.2f', 'x')}")
    row("cross-entropy: Triton vs unfused, speed / peak extra memory",
        f"{_fmt(f.get('ce_triton_vs_unfused_speed'), '.2f', 'x')} / "
        f"{_fmt(f.get('ce_triton_vs_unfused_memory'), '.2f', 'x')}")
    row("linear + CE (Triton, chunk 4096) vs unfused, speed / peak extra memory",
        f"{_fmt(f.get('ce_linear_triton_vs_unfused_speed'), '.2f', 'x')} / "
        f"{_fmt(f.get('ce_linear_triton_vs_unfused_memory'), '.2f', 'x')}")
    row("AdamW: CUDA op vs `torch.optim.AdamW(fused=True)`",
        f"{_fmt(f.get('adamw_cuda_vs_torch_fused'), '.2f', 'x')} "
        f"({_fmt(f.get('adamw_cuda_ms'), '.3f', ' ms')} vs "
        f"{_fmt(f.get('adamw_torch_fused_ms'), '.3f', ' ms')}, "
        f"{_fmt(f.get('adamw_cuda_gbps'), '.0f', ' GB/s')})",
        _meets(f.get("adamw_cuda_vs_torch_fused"), 1))
    row("AdamW: Triton vs `AdamW(fused=True)`",
        _fmt(f.get("adamw_triton_vs_torch_fused"), ".2f", "x"))
    train = doc.get("train", {})
    row("train, engine (packed): target tok/s, all tok/s, MFU",
        f"{_fmt(f.get('train_engine_target_tokens_per_s'), ',.0f')}, "
        f"{_fmt(f.get('train_engine_tokens_per_s'), ',.0f')}, "
        f"{_fmt(f.get('train_engine_mfu'), '.1%')}")
    row(f"train, transformers (padded, batches of {train.get('hf_micro_batch')}): target tok/s, "
        "all tok/s, MFU",
        f"{_fmt(f.get('train_hf_target_tokens_per_s'), ',.0f')}, "
        f"{_fmt(f.get('train_hf_tokens_per_s'), ',.0f')}, {_fmt(f.get('train_hf_mfu'), '.1%')}")
    row("train: engine / transformers (target tok/s); packing / padding efficiency",
        f"{_fmt(f.get('train_engine_vs_hf'), '.2f', 'x')}; "
        f"{_fmt(f.get('train_packing_efficiency'), '.1%')} / "
        f"{_fmt(f.get('train_hf_padding_efficiency'), '.1%')}")
    row("bf16 matmul 8192^3, measured here" + (" (a dry run: 512^3 fp32)" if dry else ""),
        _fmt(f.get("matmul_bf16_tflops"), ".3g", " TFLOP/s"))
    row(f"{f.get('nccl_backend') or 'nccl'}, 1-rank group: collectives / engine step / "
        "equals the step without a group",
        f"{_fmt(f.get('nccl_collectives_ok'))} / {_fmt(f.get('nccl_engine_step_ok'))} / "
        f"{_fmt(f.get('nccl_step_matches_no_process_group'))}",
        "multi-rank NCCL untested (one GPU)")
    steps = doc.get("steps", {})
    lines += ["", "Steps (seconds / time box): " + ", ".join(
        f"{name} {s['seconds']:.0f}/{s['box_s']}"
        + (" TIMED OUT" if s["timed_out"] else " skipped" if s.get("skipped")
           else f" rc {s['rc']}" if s["rc"] else "") for name, s in steps.items()) + "."]
    shapes = []
    for section in ("attention", "cross_entropy", "adamw"):
        seen = list(dict.fromkeys(r["shape"] for r in doc.get(section, {}).get("rows", [])))
        if seen:
            shapes.append(f"{section}: " + "; ".join(seen))
    if "engine" in train:
        shapes.append(f"train: {train.get('examples_per_step', 0):.0f} examples per step, "
                      f"{train.get('steps')} timed steps after {train.get('warmup')}")
    if shapes:
        lines += ["", "Shapes: " + " | ".join(shapes) + "."]
    errors = [f"{s}: {e}" for s in ("attention", "cross_entropy", "adamw", "train", "nccl")
              for e in doc.get(s, {}).get("errors", [])]
    if errors:
        lines += ["", "Errors:", *(f"- {e}" for e in errors)]
    return "\n".join(lines) + "\n"


def step_report(out: Path, dry: bool) -> None:
    doc = load(out)
    doc["mode"] = mode(dry)
    for key in FIGURE_KEYS:
        doc["figures"].setdefault(key, None)
    write(out, doc)
    text = report_markdown(doc)
    (out / MD_NAME).write_text(text)
    print(text)


def mode(dry: bool) -> str:
    return "dry-run" if dry else "gpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optiml_engine.benchmarks.gpu_check",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["env", "tests", "attention", "cross-entropy", "adamw",
                                         "train", "nccl", "record", "report"])
    parser.add_argument("args", nargs="*", help="record: NAME RC SECONDS BOX")
    parser.add_argument("--out", required=True, help="the output folder")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    parser.add_argument("--workers", type=int, default=8, help="tests: pytest-xdist workers")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.step == "record":
        name, rc, seconds, box = args.args
        step_record(out, args.dry_run, name, int(rc), float(seconds), int(box))
        return 0
    if args.step == "tests":
        return step_tests(out, args.dry_run, args.workers)
    steps = {"env": step_env, "attention": step_attention, "cross-entropy": step_cross_entropy,
             "adamw": step_adamw, "train": step_train, "nccl": step_nccl, "report": step_report}
    steps[args.step](out, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
