"""From a sweep file to its runs: variants x seeds, each with its directory and recipe.

OUT/
  plan.json            the runs, their overrides and directories (for --status and the report)
  events.jsonl         one line per run started / finished / failed, as it happens
  benches/<stem>/      benches built from the sweep's bench YAMLs
  runs/<variant>-s<seed>/
    recipe.yaml        the resolved recipe this run trains (train.seed, checkpoint and TB dirs set)
    checkpoints/ tb/   the trainer's
    eval/              `optiml eval` results (results.json, report.md)
    train.log eval.log what the two processes printed
    train_cost.json    wall time and target tokens of the training
    DONE.json          written last, with the run's scores: a run with it is never redone
  results.json report.md *.png   the comparison (sweep/report.py)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from optiml_engine.config import load_recipe
from optiml_engine.errors import OptimlError
from optiml_engine.sweep.spec import SweepSpec, Variant

DONE = "DONE.json"


@dataclass
class Run:
    name: str
    variant: str
    seed: int
    overrides: list[str]  # the variant's and the seed's, on top of the sweep's (for reading)
    bench: Path  # the (YAML or built) bench it trains on
    value: float | None

    def dir(self, out: Path) -> Path:
        return Path(out) / "runs" / self.name


def plan_runs(spec: SweepSpec) -> list[Run]:
    """Variant-major order: all seeds of the first variant, then the next variant."""
    return [Run(name=f"{v.name}-s{seed}", variant=v.name, seed=seed,
                overrides=[*v.overrides, f"train.seed={seed}"], bench=v.bench or spec.bench,
                value=v.value)
            for v in spec.variants for seed in spec.seeds]


def built_bench_dir(bench: Path, out: Path) -> Path:
    """Where a bench lives once built: a built bench is itself, a YAML is built under OUT."""
    return bench if bench.is_dir() else Path(out).resolve() / "benches" / bench.stem


def run_overrides(spec: SweepSpec, run: Run, out: Path) -> list[str]:
    """Everything a run's recipe gets on top of the base recipe, in the order it is applied."""
    run_dir = run.dir(out).resolve()
    eval_bench = built_bench_dir(spec.bench, out)
    return [*spec.overrides, *run.overrides,
            f"data.bench={built_bench_dir(run.bench, out)}", f"eval.bench={eval_bench}",
            f"checkpoint.dir={run_dir / 'checkpoints'}", "checkpoint.load=latest",
            f"logging.dir={run_dir / 'tb'}"]


def run_recipe(spec: SweepSpec, run: Run, out: Path):
    """The run's recipe, validated; errors name the sweep file and the variant."""
    try:
        return load_recipe(spec.recipe, run_overrides(spec, run, out))
    except OptimlError as e:
        raise OptimlError(f"{spec.path}: variant {run.variant}", str(e),
                          "fix the variant's overrides or the sweep's") from None


def check_runs(spec: SweepSpec, runs: list[Run], out: Path) -> None:
    """Every run's recipe resolves (the dry run and the start of a sweep fail here, early)."""
    for run in runs:
        run_recipe(spec, run, out)


def describe(spec: SweepSpec, runs: list[Run], out: Path) -> str:
    """The --dry-run listing: one line per run with its state and overrides."""
    lines = [f"sweep {spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds = "
             f"{len(runs)} runs (baseline {spec.baseline}); recipe {spec.recipe.name}, "
             f"bench {spec.bench.name}, eval shots {spec.eval.shots}"]
    for run in runs:
        state = "done" if (run.dir(out) / DONE).is_file() else "todo"
        extra = f" bench={run.bench.name}" if run.bench != spec.bench else ""
        lines.append(f"  {state}  {run.name:<28} {' '.join(run.overrides)}{extra}")
    return "\n".join(lines)


def write_plan(spec: SweepSpec, runs: list[Run], out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"sweep": spec.name, "file": spec.path.name, "baseline": spec.baseline,
            "swept": spec.swept, "seeds": spec.seeds, "variants": [v.name for v in spec.variants],
            "runs": [{"name": r.name, "variant": r.variant, "seed": r.seed,
                      "overrides": r.overrides, "value": r.value} for r in runs]}
    tmp = out / f"plan.json.{os.getpid()}.tmp"  # array tasks may write it at the same time
    tmp.write_text(json.dumps(plan, indent=1) + "\n")
    tmp.replace(out / "plan.json")


def variant_of(spec: SweepSpec, run: Run) -> Variant:
    return spec.variant(run.variant)
