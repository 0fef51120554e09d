"""The package graph: no cycles, imports downwards only (tools/check_imports.py, DESIGN.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_imports", ROOT / "tools/check_imports.py")
check_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_imports)


def test_the_package_imports_downwards_only_and_has_no_cycles():
    assert check_imports.check(ROOT / "optiml_engine") == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "optiml_engine" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "optiml_engine"


def test_a_cycle_through_a_function_level_import_and_an_upward_edge_are_reported(
    tmp_path, capsys
):
    package = _write(tmp_path, {
        "__init__.py": '__version__ = "0"\n',
        "errors.py": "",
        "config.py": "from optiml_engine.errors import E\nimport optiml_engine.kernels.dispatch\n",
        "kernels/__init__.py": "",
        "kernels/dispatch.py": "from optiml_engine import __version__\n",
        "model/__init__.py": "from .opt import build\n",
        "model/opt.py": (
            "from optiml_engine.kernels import dispatch\n\n\n"
            "def build():\n"
            "    from ..data.packing import pack  # hidden in a function\n"
            "    return pack\n"
        ),
        "data/__init__.py": "",
        "data/packing.py": "from optiml_engine.model import opt\n",
        "training/trainer.py": "from optiml_engine import data, model\n",
        "eval/harness.py": "from optiml_engine.training.trainer import Trainer\n",
        "cli.py": "from optiml_engine.eval import harness\nfrom optiml_engine import training\n",
    })
    problems = check_imports.check(package)
    assert problems == [
        "optiml_engine/config.py:2: optiml_engine.config -> optiml_engine.kernels"
        " (upward: layer 1 imports layer 2)",
        "optiml_engine/eval/harness.py:1: optiml_engine.eval -> optiml_engine.training"
        " (same layer (5): side by side, neither imports the other)",
        "optiml_engine/model/opt.py:5: optiml_engine.model -> optiml_engine.data"
        " (upward: layer 3 imports layer 4)",
        "optiml_engine/data/packing.py:1: optiml_engine.data -> optiml_engine.model"
        " (cycle: optiml_engine.data -> optiml_engine.model -> optiml_engine.data)",
    ]
    assert check_imports.main([str(package)]) == 1
    assert capsys.readouterr().out.splitlines() == problems
