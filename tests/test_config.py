import subprocess
import sys

import pytest

from optiml_engine.cli import main
from optiml_engine.config import load_recipe
from optiml_engine.errors import OptimlError

GOOD = """\
model: {hidden_size: 32, num_layers: 2, num_heads: 4, vocab_size: 300,
        max_position_embeddings: 128}
optim: {lr: 5e-5, betas: [0.9, 0.95]}
data: {seq_length: 128}
"""


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_good_recipe_with_overrides(tmp_path):
    recipe = load_recipe(
        write(tmp_path, GOOD),
        ["train.steps=7", "optim.lr=1e-3", "parallel.sp=true", "precision.dtype=bf16"],
    )
    assert recipe.optim.lr == 1e-3 and recipe.train.steps == 7 and recipe.parallel.sp is True
    assert recipe.model.ffn_hidden_size == 128 and recipe.model.word_embed_proj_dim == 32
    assert recipe.optim.betas == [0.9, 0.95] and recipe.precision.dtype == "bf16"


def test_preset_fills_published_dimensions():
    recipe = load_recipe(None, ["model.preset=350m"])
    m = recipe.model
    assert (m.num_layers, m.hidden_size, m.num_heads) == (24, 1024, 16)
    assert m.word_embed_proj_dim == 512 and m.pre_layer_norm is False
    assert load_recipe(None, ["model.preset=2.7b"]).model.hidden_size // 32 == 80


@pytest.mark.parametrize(
    "extra, override, line",
    [
        (
            "logging: {intervl: 3}\n",
            None,
            "{path}: logging.intervl: unknown key (did you mean 'logging.interval'?)",
        ),
        # An override's own mistakes name the override, not the file it was applied to.
        ("", "train.steps=abc", "command line: train.steps=abc: expected int, got 'abc' "
         "(write int)"),
        ("", "optim.lr=-1", "command line: optim.lr=-1: -1.0 is below the minimum "
         "(allowed: >= 0.0)"),
        ("", "optim.lrr=1", "command line: optim.lrr=1: unknown key (did you mean 'optim.lr'?)"),
        ("", "train={steps: x}", "command line: train={steps: x}: train.steps: expected int, "
         "got 'x' (write int)"),
        ("", "train.steps.x=1", "command line: train.steps.x=1: 'train.steps' is not a section "
         "(write train.steps=VALUE)"),
        (
            "",
            "precision.dtype=fp8",
            "command line: precision.dtype=fp8: 'fp8' is not allowed (allowed: fp32, bf16, fp16)",
        ),
        # A check across fields (here with the file's model) still names the file.
        ("", "data.seq_length=4096", "{path}: data.seq_length: 4096 exceeds the model's 128 "
         "positions (allowed: <= 128)"),
    ],
)
def test_bad_recipes_exit_2_with_one_line(tmp_path, capsys, extra, override, line):
    path = write(tmp_path, GOOD + extra)
    argv = ["train", str(path)] + ([override] if override else [])
    assert main(argv) == 2
    assert capsys.readouterr().err == "optiml: error: " + line.replace("{path}", str(path)) + "\n"


def test_missing_recipe_file_is_a_user_error(tmp_path):
    with pytest.raises(OptimlError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_cli_prints_no_traceback(tmp_path):
    path = write(tmp_path, GOOD + "train: {stepz: 3}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "optiml_engine", "train", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"optiml: error: {path}: train.stepz: unknown key (did you mean 'train.steps'?)"
    ]
