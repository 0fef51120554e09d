"""Sweep files: runs planned as variants x seeds, clear one-line errors (exit 2) naming the file
and the field, --dry-run, and --emit-slurm's array script with each run's overrides."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from optiml_engine.cli import main
from optiml_engine.errors import OptimlError
from optiml_engine.sweep.plan import plan_runs
from optiml_engine.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[2]


def write_sweep(tmp_path, bench, **changes):
    sweep = {"recipe": str(REPO / "recipes" / "demo.yaml"), "bench": str(bench),
             "seeds": [1, 2], "overrides": ["train.steps=2"],
             "grid": {"data.eps_cap": [128, 1024, 4096]}}
    sweep.update(changes)
    sweep = {k: v for k, v in sweep.items() if v is not None}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_grid_times_seeds_gives_named_runs(tmp_path, bench_dir):
    spec = load_sweep(write_sweep(tmp_path, bench_dir / "out"))
    runs = plan_runs(spec)
    assert [r.name for r in runs] == [f"eps_cap={v}-s{s}" for v in (128, 1024, 4096)
                                      for s in (1, 2)]
    assert runs[3].overrides == ["data.eps_cap=1024", "train.seed=2"]
    assert spec.swept == "data.eps_cap" and [r.value for r in runs[::2]] == [128, 1024, 4096]
    assert spec.baseline == "eps_cap=128"


def test_named_variants_take_the_swept_value_from_their_overrides(tmp_path, bench_dir):
    path = write_sweep(tmp_path, bench_dir / "out", grid=None, swept="data.mix_reasoning",
                       baseline="r1", variants=[
                           {"name": "r0", "overrides": ["data.mix_reasoning=0"]},
                           {"name": "r1", "overrides": ["data.mix_reasoning=1.0"]}])
    spec = load_sweep(path)
    assert [v.value for v in spec.variants] == [0, 1.0] and spec.baseline == "r1"


@pytest.mark.parametrize("changes, message", [
    ({"seed": [1]}, "s.yaml: seed: unknown key"),
    ({"grid": {"data.eps_kap": [1]}}, "s.yaml: grid.data.eps_kap: data.eps_kap=1: unknown key"),
    ({"grid": None, "variants": [{"name": "a", "overrides": ["optim.lr=fast"]}]},
     r"variants\[0\].overrides: optim.lr=fast: expected float"),
    ({"variants": [{"name": "a"}]}, "give either `variants` or `grid`"),
    ({"eval": {"levels": ["heldout_topic"]}}, "eval.levels: unknown level 'heldout_topic'"),
    ({"seeds": [1, 1]}, "seeds: .* repeated"),
    ({"launcher": "mpirun -n 2"}, "launcher: 'mpirun -n 2' is not a launcher"),
    ({"baseline": "nope"}, "baseline: 'nope' is not a variant"),
    ({"recipe": "missing.yaml"}, "recipe: missing.yaml not found"),
])
def test_mistakes_are_one_line_naming_the_file_and_field(tmp_path, bench_dir, changes, message):
    path = write_sweep(tmp_path, bench_dir / "out", **changes)
    with pytest.raises(OptimlError, match=message):
        load_sweep(path)


def test_cli_exits_2_with_one_line(tmp_path, bench_dir, capsys):
    path = write_sweep(tmp_path, bench_dir / "out", seed=[1])
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s.yaml: seed: unknown key" in err


def test_a_run_recipe_that_does_not_resolve_names_the_variant(tmp_path, bench_dir, capsys):
    path = write_sweep(tmp_path, bench_dir / "out", grid=None,
                       variants=[{"name": "big", "overrides": ["data.seq_length=4096"]}])
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "variant big" in capsys.readouterr().err


def test_dry_run_lists_every_run(tmp_path, bench_dir, capsys):
    path = write_sweep(tmp_path, bench_dir / "out")
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sweep s: 3 variants x 2 seeds = 6 runs")
    assert lines[1].split() == ["todo", "eps_cap=128-s1", "data.eps_cap=128", "train.seed=1"]
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


def test_emit_slurm_writes_one_array_task_per_run(tmp_path, bench_dir):
    path = write_sweep(tmp_path, bench_dir / "out")
    script = tmp_path / "sweep.sbatch"
    out = tmp_path / "o"
    assert main(["sweep", str(path), "--out", str(out), "--emit-slurm", str(script)]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-5" in text
    runs = re.search(r"^RUNS=\((.*)\)$", text, re.M).group(1)
    assert shlex.split(runs) == [f"eps_cap={v}-s{s}" for v in (128, 1024, 4096) for s in (1, 2)]
    block = re.search(r"^OVERRIDES=\(\n(.*?)\n\)$", text, re.M | re.S).group(1)
    assert [shlex.split(line)[0] for line in block.splitlines()] == [
        f"data.eps_cap={v} train.seed={s}" for v in (128, 1024, 4096) for s in (1, 2)]
    assert f'--out {out} --run "$RUN"' in text
    # each run's recipe is prepared, with its overrides resolved
    recipe = yaml.safe_load((out / "runs" / "eps_cap=1024-s2" / "recipe.yaml").read_text())
    assert (recipe["data"]["eps_cap"], recipe["train"]["seed"], recipe["train"]["steps"]) == \
        (1024, 2, 2)
    assert recipe["checkpoint"]["dir"] == str((out / "runs" / "eps_cap=1024-s2" /
                                               "checkpoints").resolve())
