"""Runs a sweep: each run is two processes, its training (the sweep's launcher running
sweep/worker.py) then its evaluation (`optiml eval`), then its DONE.json. A run with DONE.json is
never redone, so a killed sweep started again continues where it stopped (a run killed while
training resumes from its latest checkpoint; its evaluation resumes per task). `parallel` runs
that many runs at once, each in its own processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import optiml_engine
from optiml_engine.errors import OptimlError
from optiml_engine.sweep.plan import (
    DONE,
    Run,
    built_bench_dir,
    plan_runs,
    run_recipe,
    write_plan,
)
from optiml_engine.sweep.report import short_scores, write_report
from optiml_engine.sweep.scores import run_scores
from optiml_engine.sweep.spec import SweepSpec
from optiml_engine.sweep.worker import COST

EVENTS = "events.jsonl"
_events_lock = threading.Lock()


def log_event(out: Path, event: str, run: str, **extra) -> None:
    """One JSON line per run started / finished / failed (read by --status and the tests)."""
    line = json.dumps({"time": round(time.time(), 1), "event": event, "run": run, **extra})
    with _events_lock, (Path(out) / EVENTS).open("a") as f:
        f.write(line + "\n")


def build_benches(spec: SweepSpec, out: Path, say=print) -> None:
    """Build each bench YAML the sweep names once, under OUT/benches (up-to-date ones are kept)."""
    from optiml_engine.data.bench import build_bench

    for bench in dict.fromkeys([spec.bench, *(v.bench for v in spec.variants if v.bench)]):
        if bench.is_dir():
            if not (bench / "manifest.json").is_file():
                raise OptimlError(f"{spec.path}: bench {bench.name}", "is not a built bench",
                                  "name a bench YAML, or a directory `optiml data build` wrote")
            continue
        target = built_bench_dir(bench, out)
        build_bench(bench, target)
        say(f"bench {bench.name} -> {target.relative_to(Path(out).resolve())}")


def prepare(spec: SweepSpec, out: Path, only: str | None = None) -> list[Run]:
    """plan.json and every unfinished run's recipe.yaml (only `only`'s, when given: array
    tasks run side by side). A finished run whose recipe would now differ (the sweep file
    changed) is refused rather than silently reused."""
    runs = plan_runs(spec)
    write_plan(spec, runs, out)
    for run in runs:
        if only is not None and run.name != only:
            continue
        text = run_recipe(spec, run, out).to_yaml()
        path = run.dir(out) / "recipe.yaml"
        if (run.dir(out) / DONE).is_file():
            if path.read_text() != text:
                raise OptimlError(f"{spec.path}: variant {run.variant}",
                                  f"run {run.name} finished with another recipe",
                                  f"delete {run.dir(out)} to redo it, or use another --out")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return runs


def _env(parallel: int) -> dict:
    env = dict(os.environ)
    root = str(Path(optiml_engine.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    return env


def train_command(spec: SweepSpec, run_dir: Path) -> list[str]:
    """The launcher with this interpreter: `python` is it, `torchrun ARGS` its torch.distributed.run
    (the same torch whatever PATH holds)."""
    python, *args = spec.launcher
    launcher = [sys.executable] if python == "python" else [sys.executable, "-m",
                                                              "torch.distributed.run"]
    return [*launcher, *args, "-m", "optiml_engine.sweep.worker", str(run_dir)]


def eval_command(spec: SweepSpec, run_dir: Path, out: Path) -> list[str]:
    e = spec.eval
    return [sys.executable, "-m", "optiml_engine", "eval",
            "--checkpoint", str(run_dir / "checkpoints"),
            "--bench", str(built_bench_dir(spec.bench, out)), "--out", str(run_dir / "eval"),
            "--shots", ",".join(map(str, e.shots)), "--max-instances", str(e.max_instances),
            "--max-new-tokens", str(e.max_new_tokens), "--batch-size", str(e.batch_size),
            "--levels", ",".join(e.levels), "--seed", "0"]


class RunFailed(Exception):
    def __init__(self, run: str, stage: str, code: int, log: Path):
        tail = ""
        if log.is_file():
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            tail = lines[-1] if lines else ""
        super().__init__(f"run {run}: {stage} exited {code} ({tail}); see {log}")


def execute(spec: SweepSpec, run: Run, out: Path, env: dict) -> dict:
    """Train, evaluate, score; DONE.json last. Returns its content."""
    run_dir = run.dir(out).resolve()
    stages = [("train", train_command(spec, run_dir)), ("eval", eval_command(spec, run_dir, out))]
    if (run_dir / COST).is_file():  # trained by an earlier, killed sweep: only the eval is left
        stages = stages[1:]
    for stage, command in stages:
        log_event(out, f"{stage}_start", run.name)
        log = run_dir / f"{stage}.log"
        with log.open("w") as f:
            code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        if code:
            raise RunFailed(run.name, stage, code, log)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    done = {"run": run.name, "variant": run.variant, "seed": run.seed, "value": run.value,
            "scores": run_scores(results["instances"]),
            "cost": json.loads((run_dir / COST).read_text())}
    tmp = run_dir / (DONE + ".tmp")
    tmp.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
    tmp.replace(run_dir / DONE)
    return done


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_sweep(spec: SweepSpec, out: Path, parallel: int = 1, only: str | None = None,
              say=print) -> int:
    """Every unfinished run (or just `only`), `parallel` at a time; then the report. Returns the
    exit code: 0, or 1 if a run failed (the others still run; rerun the sweep to retry it)."""
    out = Path(out)
    build_benches(spec, out, say)
    runs = prepare(spec, out, only)
    if only is not None:
        runs = [r for r in runs if r.name == only]
        if not runs:
            raise OptimlError(f"--run {only}", "no such run in the sweep",
                              "see the names `optiml sweep FILE --dry-run` lists")
    todo = [r for r in runs if not (r.dir(out) / DONE).is_file()]
    say(f"sweep {spec.name}: {len(runs) - len(todo)} of {len(runs)} runs already done, "
        f"{len(todo)} to run, {parallel} at a time -> {out}")
    env, start, finished, failed = _env(parallel), time.perf_counter(), 0, 0
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        pending = {pool.submit(execute, spec, run, out, env): run for run in todo}
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                run = pending.pop(future)
                try:
                    done = future.result()
                except RunFailed as e:
                    failed += 1
                    log_event(out, "failed", run.name, why=str(e))
                    say(f"FAILED {e}")
                    continue
                finished += 1
                log_event(out, "done", run.name, scores=done["scores"]["selection"])
                elapsed = time.perf_counter() - start
                left = len(todo) - finished - failed
                eta = elapsed / finished * left  # finished runs come at the parallel rate
                say(f"[{finished + failed}/{len(todo)}] {run.name} done in "
                    f"{_duration(done['cost']['seconds'])} train | {short_scores(done['scores'])}"
                    f" | ETA {_duration(eta)}")
    path = write_report(spec, out)
    say(f"wrote {path}")
    return 1 if failed else 0
