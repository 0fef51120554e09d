"""Every data input the engine reads fails as one OptimlError naming the file (and line, field):
non-UTF-8, truncated, absurdly nested or wrongly shaped JSON/YAML, unreadable paths, corrupt
built benches and tokenizers, unset environment variables in the bench config."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from optiml_engine.data.bench import build_bench
from optiml_engine.data.bench_config import load_bench_config
from optiml_engine.data.bench_store import BuiltBench
from optiml_engine.data.jsonl import read_src_tgt
from optiml_engine.data.sources import load_tasks
from optiml_engine.data.tokenizer import load_tokenizer
from optiml_engine.errors import OptimlError

ROOT = Path(__file__).parents[2]
FIX = Path(__file__).parent / "fixtures"
DEEP = "[" * 100_000 + "]" * 100_000
JSONL_FIX = 'write one {"src": ..., "tgt": ...} object per line'


def message(fn, *args, **kwargs) -> str:
    with pytest.raises(OptimlError) as err:
        fn(*args, **kwargs)
    return str(err.value)


# --------------------------------------------------------------------------------------------
# {src, tgt} JSONL (data.train_path)

GOOD_LINE = json.dumps({"src": "a", "tgt": "b"}) + "\n"


@pytest.mark.parametrize("second_line, suffix", [
    (b'{"src": "caf\xe9", "tgt": "b"}\n',
     ":2: not UTF-8 text (byte 0xe9 at offset 37) (save the file as UTF-8)"),
    (b'{"src": "a", "tgt": "b', ":2: truncated JSON (Unterminated string starting at column "
     f"21) ({JSONL_FIX})"),
    (b'{"src": "a" "tgt": "b"}\n', ":2: invalid JSON (Expecting ',' delimiter at column 13) "
     f"({JSONL_FIX})"),
    (DEEP.encode() + b"\n", f":2: JSON nested too deeply to read ({JSONL_FIX})"),
    (b"1" * 5000 + b"\n", ":2: invalid JSON (Exceeds the limit (4300 digits) for integer string "
     "conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase the "
     f"limit) ({JSONL_FIX})"),
    (b'["a", "b"]\n', f":2: record is not a JSON object ({JSONL_FIX})"),
    (b'{"src": "a", "tgt": 3}\n', ':2: tgt: missing or not a string (write {"src": "...", '
     '"tgt": "..."})'),
])
def test_src_tgt_jsonl(tmp_path, second_line, suffix):
    path = tmp_path / "train.jsonl"
    path.write_bytes(GOOD_LINE.encode() + second_line)
    assert message(read_src_tgt, path) == f"{path}{suffix}"


def test_src_tgt_path_that_is_a_directory_or_missing(tmp_path):
    assert message(read_src_tgt, tmp_path) == f"{tmp_path}: is a directory, not a file " \
                                              "(check the path)"
    assert message(read_src_tgt, tmp_path / "no.jsonl") == (
        f"{tmp_path / 'no.jsonl'}: file not found (check data.train_path)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(GOOD_LINE)
    path.chmod(0)
    assert message(read_src_tgt, path) == f"{path}: permission denied (make it readable)"


def test_cli_train_on_non_utf8_jsonl_is_one_line_exit_2(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_bytes(GOOD_LINE.encode() + b'{"src": "\xff", "tgt": "b"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "optiml_engine", "train", "recipes/demo.yaml", "data.bench=null",
         f"data.train_path={data}", "checkpoint.dir=null", "logging.dir=null"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"optiml: error: {data}:2: not UTF-8 text (byte 0xff at offset 34) (save the file as "
        "UTF-8)")


# --------------------------------------------------------------------------------------------
# Task sources

SUPERNI_FIX = "fix the file or remove it from the bench config"


@pytest.mark.parametrize("content, suffix", [
    (b'{"Definition": ["caf\xe9"]}', ":1: not UTF-8 text (byte 0xe9 at offset 20) (save the "
     "file as UTF-8)"),
    (b'{\n "Definition": ["x"],\n "Instances": [', ":3: truncated JSON (Expecting value at "
     f"column 16) ({SUPERNI_FIX})"),
    (DEEP.encode(), f": JSON nested too deeply to read ({SUPERNI_FIX})"),
    (b"[1, 2]", ": a Super-NI task file must hold one JSON object (see the Super-NI task schema)"),
])
def test_superni_task_files(tmp_path, content, suffix):
    path = tmp_path / "task1_bad.json"
    path.write_bytes(content)
    assert message(load_tasks, tmp_path, "superni") == f"{path}{suffix}"


def test_superni_split_file_not_utf8(tmp_path):
    shutil.copytree(FIX / "superni", tmp_path / "superni")
    split = tmp_path / "superni/splits/default/test_tasks.txt"
    split.write_bytes(b"task\xff\n")
    assert message(load_tasks, tmp_path / "superni", "superni") == (
        f"{split}:1: not UTF-8 text (byte 0xff at offset 4) (save the file as UTF-8)")


def test_promptsource_templates_not_utf8_or_nested(tmp_path):
    d = tmp_path / "toy"
    shutil.copytree(FIX / "promptsource/toy_reviews", d)
    (d / "templates.yaml").write_bytes(b"dataset: caf\xe9\n")
    assert message(load_tasks, d, "promptsource") == (
        f"{d / 'templates.yaml'}:1: not UTF-8 text (byte 0xe9 at offset 12) (save the file as "
        "UTF-8)")
    (d / "templates.yaml").write_text("templates: " + DEEP)
    assert message(load_tasks, d, "promptsource") == (
        f"{d / 'templates.yaml'}: YAML nested too deeply to read (fix the templates file or "
        "remove it from the bench config)")


def test_promptsource_records_truncated(tmp_path):
    d = tmp_path / "toy"
    shutil.copytree(FIX / "promptsource/toy_reviews", d)
    with (d / "train.jsonl").open("a") as f:
        f.write('{"text": "cut')
    lines = (d / "train.jsonl").read_text().count("\n") + 1
    assert message(load_tasks, d, "promptsource") == (
        f"{d / 'train.jsonl'}:{lines}: truncated JSON (Unterminated string starting at column "
        "10) (one JSON object per line)")


def test_flan_templates_nested_or_wrong_shape(tmp_path):
    d = tmp_path / "flan"
    shutil.copytree(FIX / "flan", d)
    fix = "export FLAN's patterns as {dataset: [[input, target], ...]}"
    (d / "templates.json").write_text(DEEP)
    assert message(load_tasks, d, "flan") == (
        f"{d / 'templates.json'}: JSON nested too deeply to read ({fix})")
    (d / "templates.json").write_text('["a", "b"]')
    assert message(load_tasks, d, "flan") == (
        f"{d / 'templates.json'}: must map dataset names to lists of pattern pairs")


# --------------------------------------------------------------------------------------------
# The bench config

def test_bench_config_not_utf8_nested_nan(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    assert message(load_bench_config, path) == (
        f"{path}:1: not UTF-8 text (byte 0xe9 at offset 9) (save the file as UTF-8)")
    path.write_text("sources: " + DEEP)
    assert message(load_bench_config, path) == (
        f"{path}: YAML nested too deeply to read (fix the YAML syntax)")
    base = {"sources": [{"name": "superni", "format": "synthetic"}]}
    for section, key in (("held_out", "instances"), ("leakage", "threshold")):
        path.write_text(yaml.safe_dump({**base, section: {key: float("nan")}}))
        assert message(load_bench_config, path) == (
            f"{path}: {section}.{key}: nan is not a finite number (write a finite number)")
    assert message(load_bench_config, tmp_path / "none.yaml") == (
        f"{tmp_path / 'none.yaml'}: file not found (pass the path of a bench YAML (see "
        "recipes/bench/))")


def test_opt_iml_bench_config_names_the_unset_variables(monkeypatch):
    monkeypatch.delenv("OPTIML_DATA", raising=False)
    monkeypatch.delenv("OPT_TOKENIZER", raising=False)
    config = ROOT / "recipes/bench/opt-iml.yaml"
    assert message(load_bench_config, config) == (
        f"{config}: tokenizer: environment variables OPT_TOKENIZER, OPTIML_DATA are not set "
        "(export OPT_TOKENIZER=... OPTIML_DATA=...; the comment at the top of the file says "
        "what each holds)")
    monkeypatch.setenv("OPT_TOKENIZER", "/somewhere")
    assert message(load_bench_config, config) == (
        f"{config}: sources[0].path: environment variable OPTIML_DATA is not set (export "
        "OPTIML_DATA=...; the comment at the top of the file says what each holds)")
    monkeypatch.setenv("OPTIML_DATA", "/collections")
    cfg = load_bench_config(config)
    assert cfg.tokenizer == "/somewhere"
    assert cfg.sources[0].path == Path("/collections/natural-instructions")


def test_cli_opt_iml_without_variables_is_one_line_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPTIML_DATA", "OPT_TOKENIZER")}
    proc = subprocess.run([sys.executable, "-m", "optiml_engine", "data", "build",
                           "recipes/bench/opt-iml.yaml", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "optiml: error: recipes/bench/opt-iml.yaml: tokenizer: environment variables "
        "OPT_TOKENIZER, OPTIML_DATA are not set (export OPT_TOKENIZER=... OPTIML_DATA=...; the "
        "comment at the top of the file says what each holds)"]
    assert "${" not in proc.stderr


# --------------------------------------------------------------------------------------------
# Tokenizers

TOK_FIX = "use 'byte', a tokenizer.json, or a directory with vocab.json + merges.txt"


@pytest.mark.parametrize("content, suffix", [
    (b'{"version": "1.0", "trunc', f": truncated (EOF while parsing a string at line 1 column "
     f"25) ({TOK_FIX})"),
    (b"[1, 2]", ": not a valid tokenizer.json (invalid type: sequence, expected struct "
     f"Tokenizer at line 1 column 1) ({TOK_FIX})"),
    (b"\xff\xfe", ":1: not UTF-8 text (byte 0xff at offset 0) (save the file as UTF-8)"),
])
def test_garbage_tokenizer_json(tmp_path, content, suffix):
    (tmp_path / "tokenizer.json").write_bytes(content)
    assert message(load_tokenizer, str(tmp_path)) == f"{tmp_path / 'tokenizer.json'}{suffix}"


def test_garbage_vocab_and_merges(tmp_path):
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": ')
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    assert message(load_tokenizer, str(tmp_path)) == (
        f"{tmp_path}: vocab.json + merges.txt are not a BPE vocabulary (Error while reading BPE "
        f"files: EOF while parsing a value at line 1 column 14) ({TOK_FIX})")


# --------------------------------------------------------------------------------------------
# A built bench, corrupted after the build

REBUILD = "rebuild the bench with `optiml data build BENCH.yaml --out DIR --force`"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    (root / "bench.yaml").write_text(yaml.safe_dump({
        "name": "t", "tokenizer": "byte", "max_example_tokens": 200,
        "sources": [{"name": "superni", "format": "synthetic", "instances_per_task": 4,
                     "num_tasks": 6}]}))
    build_bench(root / "bench.yaml", root / "bench")
    return root / "bench"


@pytest.fixture
def bench(built, tmp_path):
    shutil.copytree(built, tmp_path / "bench")
    return tmp_path / "bench"


def test_corrupt_manifest(bench):
    manifest = bench / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    assert message(BuiltBench, bench).startswith(f"{manifest}:")
    assert message(BuiltBench, bench).endswith(f") ({REBUILD})")
    assert "truncated JSON" in message(BuiltBench, bench)
    manifest.write_text("[]")
    assert message(BuiltBench, bench) == (
        f"{manifest}: not a bench manifest (not a JSON object) ({REBUILD})")
    data = json.loads(text)
    data["shards"] = "none"
    manifest.write_text(json.dumps(data))
    assert message(BuiltBench, bench) == f"{manifest}: shards: missing or not a list ({REBUILD})"


def test_truncated_shard_and_missing_index(bench):
    shard = bench / "train" / "tokens_000.bin"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    assert message(BuiltBench, bench) == (
        f"{shard}: {size // 2} bytes, the manifest says {size} (truncated or replaced) "
        f"({REBUILD})")
    (bench / "train" / "index.npy").write_bytes(b"\x93NUMPY garbage")
    assert message(BuiltBench, bench).startswith(
        f"{bench / 'train' / 'index.npy'}: cannot read the example index (")


def test_corrupt_tasks_file(bench):
    tasks = bench / "tasks.jsonl"
    lines = tasks.read_text().splitlines()
    tasks.write_text("\n".join([lines[0], lines[1][:40]]) + "\n")
    assert message(BuiltBench(bench).tasks) == (
        f"{tasks}:2: truncated JSON (Unterminated string starting at column 38) ({REBUILD})")
    tasks.write_text(lines[0] + "\n" + json.dumps({"split": "train"}) + "\n")
    assert message(BuiltBench(bench).tasks) == f"{tasks}:2: not a task record (KeyError('name')) " \
                                               f"({REBUILD})"


def test_an_unreadable_old_manifest_is_rebuilt_not_a_traceback(built, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(built, out)
    (out / "manifest.json").write_bytes(b"\xff garbage")
    manifest = build_bench(built.parent / "bench.yaml", out)
    assert manifest["up_to_date"] is False and BuiltBench(out).manifest["counts"]["tasks"] == 6


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_a_file_the_os_cannot_read():  # reading /proc/self/mem from offset 0 fails with EIO
    assert message(read_src_tgt, "/proc/self/mem") == (
        "/proc/self/mem: cannot read the file (Input/output error) (check the path)")
