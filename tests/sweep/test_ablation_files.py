"""Every sweep under recipes/ablations/ loads and resolves each of its runs' recipes (a dry run),
so none rots; each paper study has its demo twin."""

from pathlib import Path

import pytest

from optiml_engine.cli import main

ABLATIONS = Path(__file__).resolve().parents[2] / "recipes" / "ablations"
SWEEPS = sorted(ABLATIONS.glob("*.yaml"))


def test_every_real_study_has_a_demo_twin():
    names = {p.stem for p in SWEEPS}
    real = {n for n in names if not n.startswith("demo-")}
    assert real == {"eps", "proportions", "tasks", "categories", "pretraining", "reasoning",
                    "dialogue", "objective"}
    assert {f"demo-{n}" for n in real} | {"demo-demonstrations"} == names - real


@pytest.mark.parametrize("sweep", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_dry_runs(sweep, tmp_path, capsys):
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"sweep {sweep.stem}: ")
    runs = int(out[0].split(" = ")[1].split()[0])
    assert runs == len(out) - 1 and runs >= 2
