"""A Hugging Face directory with a garbage config.json, truncated or refused weights, or weights
that do not match the config is one OptimlError naming the file (and key), never a traceback."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optiml_engine.config import ModelConfig, resolve_model_config
from optiml_engine.errors import OptimlError
from optiml_engine.model import OPTForCausalLM
from optiml_engine.model.hf_io import read_hf_config

ROOT = Path(__file__).parents[2]
NOT_HF = "point at a Hugging Face OPT directory"
CORRUPT = "re-download or re-export the checkpoint"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(vocab_size=64, hidden_size=16, num_layers=2,
                                           num_heads=2, max_position_embeddings=32))
    path = tmp_path_factory.mktemp("hf") / "tiny"
    OPTForCausalLM(cfg).save_hf(path)
    return path


@pytest.fixture
def hf(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "hf")
    return tmp_path / "hf"


def message(path) -> str:
    with pytest.raises(OptimlError) as err:
        OPTForCausalLM.from_hf(path)
    return str(err.value)


def edit_config(hf, **changes):
    config = json.loads((hf / "config.json").read_text())
    config.update(changes)
    (hf / "config.json").write_text(json.dumps(config))


def test_the_tiny_directory_loads(hf):
    assert OPTForCausalLM.from_hf(hf).config.num_layers == 2


@pytest.mark.parametrize("content, suffix", [
    ('{"hidden_size": 16, "num_hidden_layers"', f":1: truncated JSON (Expecting ':' delimiter "
     f"at column 40) ({CORRUPT})"),
    ("[16, 2, 2]", f": expected a JSON object of OPT settings, got list ({NOT_HF})"),
    ("[" * 100_000 + "]" * 100_000, f": JSON nested too deeply to read ({CORRUPT})"),
])
def test_garbage_config_json(hf, content, suffix):
    (hf / "config.json").write_text(content)
    assert message(hf) == f"{hf / 'config.json'}{suffix}"


@pytest.mark.parametrize("changes, suffix", [
    ({"num_hidden_layers": "two"}, ": num_hidden_layers: expected int or null, got 'two' "
     "(write int or null)"),
    ({"dropout": float("nan")}, ": dropout: nan is not a finite number (write a finite number)"),
    ({"max_position_embeddings": 10**9}, ": max_position_embeddings: 1000000000 is above the "
     "maximum (allowed: <= 131072)"),
    ({"hidden_size": None}, ": model.hidden_size: is not set (set it, or choose model.preset "
     "(125m ... 175b))"),
    ({"num_attention_heads": 3}, ": model.num_heads: hidden_size 16 is not divisible by 3 "
     "(choose a divisor of model.hidden_size)"),
])
def test_config_json_values_are_checked_naming_the_hf_key(hf, changes, suffix):
    edit_config(hf, **changes)
    assert message(hf) == f"{hf / 'config.json'}{suffix}"


def test_a_missing_size_key_is_named(hf):
    config = json.loads((hf / "config.json").read_text())
    del config["num_hidden_layers"]
    (hf / "config.json").write_text(json.dumps(config))
    assert str(pytest.raises(OptimlError, read_hf_config, hf).value) == (
        f"{hf / 'config.json'}: num_hidden_layers: missing ({NOT_HF})")


def test_truncated_safetensors(hf):
    weights = hf / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert message(hf) == (f"{weights}: not a readable safetensors file (Error while "
                           "deserializing header: incomplete metadata, file not fully covered) "
                           f"({CORRUPT})")


def test_sharded_index_naming_a_missing_or_garbage_file(hf):
    weights = hf / "model.safetensors"
    weights.rename(hf / "shard-1.safetensors")
    index = hf / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors",
                                                "b": "shard-2.safetensors"}}))
    assert message(hf) == (f"{hf / 'shard-2.safetensors'}: not found (named by "
                           f"model.safetensors.index.json) ({CORRUPT})")
    index.write_text('{"weight_map": ["shard-1.safetensors"]}')
    assert message(hf) == (f"{index}: weight_map: missing or not a {{tensor: file}} mapping "
                           f"({CORRUPT})")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_pickle_with_code_is_refused_not_run(hf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (hf / "model.safetensors").unlink()
    torch.save({"decoder.embed_tokens.weight": torch.zeros(2), "x": Evil()},
               hf / "pytorch_model.bin")
    assert message(hf) == (f"{hf / 'pytorch_model.bin'}: refused: the pickle holds more than "
                           "tensors (Trying to load unsupported GLOBAL posix.system whose module "
                           "posix is blocked) (load only trusted weights; convert them to "
                           "safetensors)")
    assert not (tmp_path / "pwned.txt").exists()


def test_truncated_or_odd_bin(hf):
    (hf / "model.safetensors").unlink()
    bin_file = hf / "pytorch_model.bin"
    torch.save({"a": torch.zeros(1000)}, bin_file)
    bin_file.write_bytes(bin_file.read_bytes()[:500])
    assert message(hf) == (f"{bin_file}: not a readable PyTorch file (PytorchStreamReader failed "
                           "reading zip archive: failed finding central directory) "
                           f"({CORRUPT})")
    torch.save([torch.zeros(2)], bin_file)
    assert message(hf) == f"{bin_file}: not a state dict of tensors ({CORRUPT})"


def test_weights_of_another_shape_than_the_config(hf):
    edit_config(hf, ffn_dim=48)
    assert message(hf) == (f"{hf}: weight decoder.layers.0.fc1.weight has shape (64, 16), "
                           "config.json implies (48, 16) (the checkpoint does not match its "
                           "config.json)")


def test_cli_convert_a_garbage_config_is_one_line_exit_2(hf, tmp_path):
    (hf / "config.json").write_bytes(b'{"hidden_size": "\xff"}')
    proc = subprocess.run([sys.executable, "-m", "optiml_engine", "convert", "hf2engine",
                           "--hf", str(hf), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"optiml: error: {hf / 'config.json'}:1: not UTF-8 text (byte 0xff at offset 17) (save "
        "the file as UTF-8)"]
