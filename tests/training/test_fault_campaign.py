"""The fault campaign (tools/fault_campaign.py) in its short form: kill -9 in steps and inside
saves under one process and torchrun PP2 (dropout 0.1, resumed bit-identically), corrupt
checkpoints, a concurrent run, bad inputs and diverged runs, on real processes and files."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_fault_campaign_has_every_case_as_expected(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "fault_campaign.py"), "--quick",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert len(table) == 13  # the header and 12 cases
    assert "**FAILED**" not in out.stdout
