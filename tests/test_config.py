import re
import subprocess
import sys
from pathlib import Path

import pytest

from optiml_engine.cli import main
from optiml_engine.config import load_recipe
from optiml_engine.errors import OptimlError

ROOT = Path(__file__).parents[1]

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


def _float_keys():
    import dataclasses
    import typing

    from optiml_engine.config import Recipe

    keys = []
    for section in dataclasses.fields(Recipe):
        cls = typing.get_type_hints(Recipe)[section.name]
        hints = typing.get_type_hints(cls)
        keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(cls)
                 if hints[f.name] in (float, list[float])]
    return keys


FLOAT_KEYS = _float_keys()


def test_every_float_key_is_covered():
    assert {"optim.lr", "optim.clip_grad", "model.dropout", "optim.betas",
            "precision.initial_loss_scale", "data.temperature"} <= set(FLOAT_KEYS)
    assert len(FLOAT_KEYS) == 17  # + parallel.timeout_minutes


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_inf_are_refused_for_every_float_key(tmp_path, key, value):
    written = f"[0.9, {value}]" if key == "optim.betas" else value
    shown = {".nan": "nan", ".inf": "inf", "-.inf": "-inf"}[value]
    with pytest.raises(OptimlError) as err:
        load_recipe(write(tmp_path, GOOD), [f"{key}={written}"])
    # An override's error names the override (the file is not where the value came from).
    assert str(err.value) == (f"command line: {key}={written}: {shown} is not a finite "
                              "number (write a finite number)")


def test_nan_in_the_recipe_file_names_the_file_and_key(tmp_path):
    path = write(tmp_path, GOOD.replace("lr: 5e-5", "lr: .nan"))
    with pytest.raises(OptimlError, match=r"recipe.yaml: optim.lr: nan is not a finite number"):
        load_recipe(path)


@pytest.mark.parametrize("overrides, message", [
    (["model.max_position_embeddings=1000000000", "data.seq_length=1000"],
     "model.max_position_embeddings=1000000000: 1000000000 is above the maximum "
     "(allowed: <= 131072)"),
    (["data.seq_length=1000000000"],
     "data.seq_length=1000000000: 1000000000 is above the maximum (allowed: <= 131072)"),
    (["model.vocab_size=10000000000"],
     "model.vocab_size=10000000000: 10000000000 is above the maximum (allowed: <= 1048576)"),
    (["model.hidden_size=1048576", "model.num_heads=1"],
     "model.hidden_size=1048576: 1048576 is above the maximum (allowed: <= 65536)"),
    (["train.micro_batch_size=1000000", "train.global_batch_size=1000000"],
     "train.micro_batch_size: 1000000 x data.seq_length 128 = 128000000 tokens per "
     "micro-batch, above the bound of 16777216"),
])
def test_impossible_sizes_are_refused_before_anything_is_built(tmp_path, overrides, message):
    with pytest.raises(OptimlError, match=re.escape(message)):
        load_recipe(write(tmp_path, GOOD), overrides)


def test_logging_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "tb").write_text("not a directory")
    with pytest.raises(OptimlError) as err:
        load_recipe(write(tmp_path, GOOD), [f"logging.dir={tmp_path / 'tb'}"])
    assert str(err.value) == (f"{tmp_path / 'recipe.yaml'}: logging.dir: {tmp_path / 'tb'}: "
                              "is a file, not a directory (choose a directory path)")
    with pytest.raises(OptimlError, match=re.escape(f"{tmp_path / 'tb'} is a file")):
        load_recipe(write(tmp_path, GOOD), [f"logging.dir={tmp_path / 'tb' / 'run1'}"])
    load_recipe(write(tmp_path, GOOD), [f"logging.dir={tmp_path / 'new' / 'run1'}"])  # fine


def test_non_utf8_recipe_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    before = GOOD.encode() + b"train: {steps: 3}  # caf"
    path.write_bytes(before + b"\xe9\n")  # Latin-1, line 5
    with pytest.raises(OptimlError) as err:
        load_recipe(path)
    assert str(err.value) == (f"{path}:5: not UTF-8 text (byte 0xe9 at offset {len(before)}) "
                              "(save the file as UTF-8)")


def test_deeply_nested_recipe_is_one_line(tmp_path):
    path = write(tmp_path, "model: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(OptimlError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: YAML nested too deeply to read (fix the YAML syntax)"


def test_bad_yaml_names_the_line(tmp_path):
    path = write(tmp_path, GOOD + "train: {steps: 3]}\n")
    with pytest.raises(OptimlError) as err:
        load_recipe(path)
    assert str(err.value) == (f"{path}:5: invalid YAML (expected ',' or '}}', but got ']') "
                              "(fix the YAML syntax)")


@pytest.mark.parametrize("content, suffix", [
    (b"optim: {lr: .nan}\n", ": optim.lr: nan is not a finite number (write a finite number)"),
    (b"model: {max_position_embeddings: 1000000000}\n",
     ": model.max_position_embeddings: 1000000000 is above the maximum (allowed: <= 131072)"),
    (b"name: caf\xe9\n", ":1: not UTF-8 text (byte 0xe9 at offset 9) (save the file as UTF-8)"),
])
def test_cli_bad_recipe_inputs_exit_2_with_one_line(tmp_path, content, suffix):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "optiml_engine", "train", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"optiml: error: {path}{suffix}"]


def test_the_old_zero1_key_is_refused_with_its_replacement(tmp_path):
    """parallel.zero1 became parallel.shard (none | zero1 | zero3): refused with the new
    spelling, in a recipe file and on the command line, never silently ignored."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("parallel:\n  zero1: true\n")
    for path, overrides in ((recipe, []), (None, ["parallel.zero1=true"])):
        with pytest.raises(OptimlError) as err:
            load_recipe(path, overrides)
        assert "parallel.zero1" in str(err.value)
        assert "was replaced by parallel.shard" in str(err.value)
        assert "parallel.shard: zero1" in str(err.value)
    assert load_recipe(write(tmp_path, GOOD), ["parallel.shard=zero3"]).parallel.shard == "zero3"
    with pytest.raises(OptimlError, match="parallel.shard"):
        load_recipe(None, ["parallel.shard=zero2"])
