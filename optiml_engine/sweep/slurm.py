"""`optiml sweep FILE --emit-slurm SCRIPT`: an sbatch array script, one array task per run.

Array task i runs `optiml sweep FILE --out OUT --run RUN_i`: that run alone (skipped if done),
then the report of whatever has finished. The benches and every run's recipe.yaml are prepared
when the script is written, so the tasks only train and evaluate.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from optiml_engine.sweep.plan import Run
from optiml_engine.sweep.spec import SweepSpec


def slurm_script(spec: SweepSpec, runs: list[Run], out: Path, workdir: Path) -> str:
    out = Path(out).resolve()
    q = shlex.quote
    lines = ["#!/bin/bash",
             f"# optiml sweep {spec.name}: {len(runs)} runs, one array task each. "
             "Submit with `sbatch` (add your partition, GPUs and time limit below).",
             f"#SBATCH --job-name=optiml-{spec.name}",
             f"#SBATCH --array=0-{len(runs) - 1}",
             f"#SBATCH --output={out}/slurm/%A_%a.log",
             "set -euo pipefail",
             f"cd {q(str(workdir))}",
             "RUNS=(" + " ".join(q(r.name) for r in runs) + ")",
             "# each run's overrides on top of the sweep's (its recipe.yaml holds them all)",
             "OVERRIDES=("]
    lines += [f"  {q(' '.join(r.overrides))}" for r in runs]
    lines += [")",
              'RUN="${RUNS[$SLURM_ARRAY_TASK_ID]}"',
              'echo "run $RUN: ${OVERRIDES[$SLURM_ARRAY_TASK_ID]}"',
              f'"${{PYTHON:-python}}" -m optiml_engine sweep {q(str(spec.path))} '
              f'--out {q(str(out))} --run "$RUN"', ""]
    return "\n".join(lines)
