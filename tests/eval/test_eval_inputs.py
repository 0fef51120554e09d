"""What `optiml eval` reads: the tokenizer of an HF directory (refused, not guessed, when it has
none), recorded in run.json and results.json; eval manifests of the wrong shape."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optiml_engine.cli import main as cli_main
from optiml_engine.config import ModelConfig, resolve_model_config
from optiml_engine.errors import OptimlError
from optiml_engine.eval.suite import load_suite
from optiml_engine.model import OPTForCausalLM

ROOT = Path(__file__).parents[2]
FAST = ["--bench", "synthetic", "--levels", "heldout_category", "--max-instances", "1",
        "--max-new-tokens", "1", "--device", "cpu"]


def hf_dir(root: Path, vocab: int) -> Path:
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(vocab_size=vocab, hidden_size=8, num_layers=1,
                                           num_heads=2, max_position_embeddings=32))
    path = root / f"opt-{vocab}"
    OPTForCausalLM(cfg).save_hf(path)
    return path


@pytest.fixture(scope="module")
def opt_vocab(tmp_path_factory):
    """An OPT-sized vocabulary (50272) and no tokenizer files: a real OPT without them."""
    return hf_dir(tmp_path_factory.mktemp("hf"), 50272)


@pytest.fixture(scope="module")
def byte_vocab(tmp_path_factory):
    return hf_dir(tmp_path_factory.mktemp("hf"), 264)


def run(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr without the progress bar)."""
    code = cli_main(["eval", *argv])
    captured = capsys.readouterr()
    err = "".join(line for line in captured.err.splitlines(keepends=True)
                  if line.startswith("optiml:"))
    return code, captured.out, err


def test_hf_directory_without_tokenizer_files_is_refused(opt_vocab, tmp_path, capsys):
    code, _, err = run(["--checkpoint", str(opt_vocab), "--out", str(tmp_path / "o"), *FAST],
                       capsys)
    assert code == 2
    assert err.splitlines() == [
        f"optiml: error: --checkpoint {opt_vocab}: no tokenizer files in this Hugging Face "
        "directory (tokenizer.json, or vocab.json + merges.txt); its 50272-token vocabulary "
        "needs its own tokenizer (pass --tokenizer with the model's tokenizer.json or "
        "vocab.json + merges.txt directory, or copy them into the directory)"]
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_half_a_bpe_vocabulary_names_the_missing_file(opt_vocab, tmp_path, capsys):
    hf = tmp_path / "hf"
    shutil.copytree(opt_vocab, hf)
    (hf / "vocab.json").write_text("{}")
    code, _, err = run(["--checkpoint", str(hf), "--out", str(tmp_path / "o"), *FAST], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "(tokenizer.json, or merges.txt beside vocab.json)" in err


def test_cli_refusal_is_one_line_without_traceback(opt_vocab, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "optiml_engine", "eval", "--checkpoint",
                           str(opt_vocab), "--out", str(tmp_path / "o"), *FAST],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"optiml: error: --checkpoint {opt_vocab}: no "
                                                   "tokenizer files")


def test_an_explicit_tokenizer_is_used_and_recorded(opt_vocab, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run(["--checkpoint", str(opt_vocab), "--out", str(out), "--tokenizer", "byte",
                        *FAST], capsys)
    assert code == 0 and err == ""
    assert json.loads((out / "run.json").read_text())["tokenizer"] == "byte"
    assert json.loads((out / "results.json").read_text())["meta"]["tokenizer"] == "byte"


def test_a_byte_sized_vocabulary_uses_the_byte_tokenizer_and_says_so(byte_vocab, tmp_path,
                                                                       capsys):
    out = tmp_path / "o"
    code, _, err = run(["--checkpoint", str(byte_vocab), "--out", str(out), *FAST], capsys)
    assert code == 0
    assert err.splitlines() == [
        f"optiml: note: {byte_vocab} has no tokenizer files (tokenizer.json, or vocab.json + "
        "merges.txt); its 264-token vocabulary fits the byte tokenizer, which is used "
        "(--tokenizer chooses another)"]
    assert json.loads((out / "run.json").read_text())["tokenizer"] == "byte"


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path, capsys):
    small = hf_dir(tmp_path, 64)
    code, _, err = run(["--checkpoint", str(small), "--out", str(tmp_path / "o"), *FAST], capsys)
    assert code == 2
    assert err.splitlines() == ["optiml: error: tokenizer byte: 260 tokens, more than the "
                                "model's 64 (pass the model's own --tokenizer)"]


# --------------------------------------------------------------------------------------------
# Eval manifests

FIX = 'write {"tasks": [{"path": ..., "format": ..., "level": ...}]}'


@pytest.mark.parametrize("manifest, suffix", [
    ({"tasks": {"path": "t.json"}}, f": tasks: missing or not a list ({FIX})"),
    ({"tasks": ["t.json"]}, f": tasks[0]: not a JSON object ({FIX})"),
    ({"tasks": [{"path": "t.json", "level": "heldout_categry"}]},
     ": tasks[0].level: 'heldout_categry' is not a level (use one of heldout_category, "
     "heldout_task, heldout_instance)"),
    ({"tasks": [{"path": ["t.json"], "level": "heldout_task"}]},
     f": tasks[0].path: expected a string, got ['t.json'] ({FIX})"),
    ({"tasks": [{"path": "t.json", "level": "heldout_task", "eval_ids": "a,b"}]},
     f": tasks[0].eval_ids: expected a list of instance id strings ({FIX})"),
])
def test_eval_manifest_shapes(tmp_path, manifest, suffix):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(OptimlError) as err:
        load_suite(str(path))
    assert str(err.value) == f"{path}{suffix}"


def test_eval_manifest_not_utf8_or_truncated(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_bytes(b'{"tasks": [{"path": "caf\xe9"')
    with pytest.raises(OptimlError) as err:
        load_suite(str(path))
    assert str(err.value) == f"{path}:1: not UTF-8 text (byte 0xe9 at offset 24) (save the " \
                             "file as UTF-8)"
    path.write_text('{"tasks": [{"path": "t.json"')
    with pytest.raises(OptimlError) as err:
        load_suite(str(path))
    assert str(err.value) == (f"{path}:1: truncated JSON (Expecting ',' delimiter at column 29) "
                              "(rebuild the bench, or fix the eval manifest)")
