"""`optiml sweep SWEEP.yaml [--out DIR] [--parallel K] [--emit-slurm FILE] [--dry-run]
[--run NAME]` and `optiml sweep --status DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from optiml_engine.errors import OptimlError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="optiml sweep", description="Run an instruction-tuning ablation (variants x seeds, "
        "each trained then evaluated on the three levels) and report it; see recipes/ablations/.")
    p.add_argument("sweep", nargs="?", help="sweep YAML (recipes/ablations/*.yaml)")
    p.add_argument("--out", help="sweep directory (default: runs/sweeps/<name>)")
    p.add_argument("--parallel", type=int, default=1,
                   help="runs at once, each its own processes (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs, their overrides and which are done; run nothing")
    p.add_argument("--emit-slurm", metavar="FILE",
                   help="write an sbatch array script (one task per run) instead of running")
    p.add_argument("--run", metavar="NAME", help="run only this run (what an array task does)")
    p.add_argument("--status", metavar="DIR", help="where the sweep in DIR stands")
    return p


def main(argv: list[str] | None = None) -> int:
    from optiml_engine.sweep.plan import check_runs, describe, plan_runs
    from optiml_engine.sweep.spec import load_sweep

    args = build_parser().parse_args(argv)
    if args.status:
        from optiml_engine.sweep.status import sweep_status

        print(sweep_status(args.status))
        return 0
    if not args.sweep:
        raise OptimlError("optiml sweep", "no sweep file", "pass SWEEP.yaml, or --status DIR")
    if args.parallel < 1:
        raise OptimlError("--parallel", f"{args.parallel} is below 1", "pass --parallel 1 or more")
    spec = load_sweep(args.sweep)
    out = Path(args.out or Path("runs") / "sweeps" / spec.name)
    runs = plan_runs(spec)
    check_runs(spec, runs, out)  # every run's recipe resolves, before anything is built
    if args.dry_run:
        print(describe(spec, runs, out))
        return 0
    from optiml_engine.sweep import runner

    if args.emit_slurm:
        from optiml_engine.sweep.slurm import slurm_script

        runner.build_benches(spec, out)
        runner.prepare(spec, out)
        script = Path(args.emit_slurm)
        script.write_text(slurm_script(spec, runs, out, Path.cwd()))
        print(f"wrote {script}: {len(runs)} array tasks; submit with `sbatch {script}`")
        return 0
    return runner.run_sweep(spec, out, args.parallel, only=args.run)
