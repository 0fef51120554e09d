"""Bench builder: the three levels, the training stream's content, no-op rebuilds, atomic output,
de-duplication, caps, bad input and the leakage check."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from optiml_engine.data import bench_store
from optiml_engine.data.bench import build_bench, main
from optiml_engine.data.bench_store import BuiltBench
from optiml_engine.data.leakage import find_leaks
from optiml_engine.data.prompts import render
from optiml_engine.data.tokenizer import load_tokenizer
from optiml_engine.errors import OptimlError

FIX = Path(__file__).parent / "fixtures"
HELD_CATEGORIES = ["Textual Entailment", "Sorting"]


def write_config(tmp_path, **overrides):
    cfg = {
        "name": "t", "seed": 1, "tokenizer": "byte", "max_example_tokens": 400,
        "sources": [{"name": "superni", "format": "synthetic", "instances_per_task": 20}],
        "held_out": {"categories": HELD_CATEGORIES, "tasks_per_category": 1,
                     "tasks": ["task5001_synthetic_reverse_letters"], "instances": 0.25},
    }
    cfg.update(overrides)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    manifest = build_bench(write_config(tmp), tmp / "out")
    return manifest, BuiltBench(tmp / "out")


def test_three_levels_are_disjoint_and_as_configured(built):
    manifest, bench = built
    split = {t["name"]: t for t in manifest["tasks"]}
    train_categories = {t["category"] for t in split.values() if t["split"] == "train"}
    for t in split.values():
        if t["category"] in HELD_CATEGORIES:
            assert t["split"] == "heldout_category" and t["n_train"] == 0
    assert not train_categories & set(HELD_CATEGORIES)
    held_tasks = [t for t in split.values() if t["split"] == "heldout_task"]
    assert split["task5001_synthetic_reverse_letters"]["split"] == "heldout_task"
    assert len(held_tasks) == 12  # one per seen category (the listed one counts for Reversal)
    assert all(t["n_train"] == 0 and t["category"] in train_categories for t in held_tasks)
    for t in split.values():
        if t["split"] == "train":
            assert t["n_eval"] == 5 and t["n_train"] == 15
    levels = bench.eval_sets()
    assert {t.name for t, _ in levels["heldout_category"]} == {
        n for n, t in split.items() if t["split"] == "heldout_category"}
    assert sum(len(i) for _, i in levels["heldout_instance"]) == 5 * 48


def test_training_stream_is_exactly_the_training_instances(built):
    manifest, bench = built
    tok = load_tokenizer("byte")
    tasks = {t.name: t for t in bench.tasks()}
    rows = 0
    for entry in manifest["tasks"]:
        task = tasks[entry["name"]]
        held = set(task.meta["eval_ids"])
        train = [i for i in task.instances if i.id not in held] if entry["split"] == "train" else []
        assert entry["n_train"] == len(train)
        for k, inst in enumerate(train):
            src, tgt = bench.example(entry["train_row_offset"] + k)
            assert (tok.decode(src), tok.decode(tgt)) == render(task, inst, seed=1, pool=train)
            assert int(bench.index[entry["train_row_offset"] + k][4]) == manifest["tasks"].index(
                entry)
        rows += len(train)
    assert rows == manifest["counts"]["train_examples"] == len(bench.index)


def test_manifest_hashes_match_files(built, tmp_path):
    manifest, bench = built
    for item in [*manifest["shards"], manifest["index"], manifest["tasks_file"]]:
        data = (bench.dir / item["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"]
    line = (bench.dir / "tasks.jsonl").read_text().splitlines()[3]
    assert hashlib.sha256(line.encode()).hexdigest() == manifest["tasks"][3]["sha256"]


def test_rebuild_is_a_noop_and_inputs_changes_rebuild(tmp_path):
    cfg = write_config(tmp_path)
    first = build_bench(cfg, tmp_path / "out")
    stamp = os.stat(tmp_path / "out" / "manifest.json").st_mtime_ns
    again = build_bench(cfg, tmp_path / "out")
    assert again["up_to_date"] and os.stat(tmp_path / "out" / "manifest.json").st_mtime_ns == stamp
    assert main(["build", str(cfg), "--out", str(tmp_path / "out")]) == 0
    cfg = write_config(tmp_path, seed=2)
    changed = build_bench(cfg, tmp_path / "out")
    assert not changed["up_to_date"]
    assert changed["input_fingerprint"] != first["input_fingerprint"]


def test_interrupted_build_leaves_the_old_bench_and_no_partial_output(tmp_path, monkeypatch):
    cfg = write_config(tmp_path)
    build_bench(cfg, tmp_path / "out")
    before = (tmp_path / "out" / "manifest.json").read_text()

    def crash(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_store.ShardWriter, "add", crash)
    with pytest.raises(KeyboardInterrupt):
        build_bench(write_config(tmp_path, seed=5), tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.yaml", "out"]
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        build_bench(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def mixed_config(tmp_path, **extra):
    shutil.copytree(FIX, tmp_path / "fx")
    sources = [
        {"name": "superni", "format": "superni", "path": "fx/superni"},
        {"name": "crossfit", "format": "seq2seq", "path": "fx/seq2seq"},
        {"name": "promptsource", "format": "promptsource", "path": "fx/promptsource"},
        {"name": "flan", "format": "flan", "path": "fx/flan"},
    ]
    categories = {"toy_reviews": "Sentiment Analysis", "flan_toy_nli": "Textual Entailment",
                  "toy_titles": "Title Generation", "unifiedskg_toy": "Question Answering",
                  "toy_translate": "Translation"}
    return write_config(tmp_path, sources=sources, categories=categories,
                        held_out={"categories": ["Textual Entailment"], "instances": 1}, **extra)


def test_mixed_sources_categories_dedup_and_caps(tmp_path):
    path = mixed_config(tmp_path, default_cap=2,
                        dedup={"aliases": {"toy_reviews": "weather_toy"}})
    manifest = build_bench(path, tmp_path / "out")
    names = {t["name"]: t for t in manifest["tasks"]}
    assert names["flan_toy_nli"]["split"] == "heldout_category"
    assert names["crossfit_prime_check"]["category"] == "Mathematics"  # the record's own
    assert names["task9001_fixture_weather_label"]["n_instances"] == 2  # capped
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["capped"]["task9001_fixture_weather_label"] == 6
    dup = [s for s in report["skipped"] if "duplicate" in s["reason"]]
    assert {s["where"] for s in dup} == {"toy_reviews_polarity_question",
                                         "toy_reviews_write_positive"}
    assert "toy_reviews_polarity_question" not in names


def test_unmapped_category_fails_naming_task_or_is_reported(tmp_path):
    path = mixed_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    del cfg["categories"]["toy_titles"]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(OptimlError, match="no category for task flan_toy_titles.*templates.json"):
        build_bench(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    cfg["on_unmapped"] = "skip"
    path.write_text(yaml.safe_dump(cfg))
    build_bench(path, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("flan_toy_titles" in s["reason"] for s in report["skipped"])


def test_bad_files_fail_or_are_skipped_and_reported(tmp_path):
    path = mixed_config(tmp_path)
    (tmp_path / "fx/superni/tasks/task9003_broken.json").write_text('{"Definition": ["x"]}')
    with pytest.raises(OptimlError, match="task9003_broken.json: field 'Categories'"):
        build_bench(path, tmp_path / "out")
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"][0]["on_error"] = "skip"
    cfg["sources"].append({"name": "t5", "format": "seq2seq", "path": "nowhere",
                           "required": False})
    path.write_text(yaml.safe_dump(cfg))
    build_bench(path, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {Path(s["where"]).name: s["reason"] for s in report["skipped"]}
    assert "Categories" in reasons["task9003_broken.json"]
    assert "optional source t5 not found" in reasons["nowhere"]
    cfg["sources"][-1]["required"] = True
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(OptimlError, match="nowhere: source t5 .* not found"):
        build_bench(path, tmp_path / "out")


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(OptimlError, match=r"sources\[0\].format"):
        build_bench(write_config(tmp_path, sources=[{"name": "x", "format": "csv",
                                                     "path": "."}]), tmp_path / "o")
    with pytest.raises(OptimlError, match="unknown key"):
        build_bench(write_config(tmp_path, held_outt={}), tmp_path / "o")


def test_leakage_finds_a_planted_duplicate(tmp_path):
    text = "the quick brown fox jumps over the lazy dog near the old river bank today"
    leaks = find_leaks([("a/1", "unrelated words only here"), ("a/2", "x " + text)],
                       [("b/1", text), ("b/2", "short text")], n=13, threshold=0.5)
    assert leaks == [{"train": "a/2", "eval": "b/1", "share": 1.0}]
    assert find_leaks([("a/1", "Short Text!")], [("b/2", "short text")]) == [
        {"train": "a/1", "eval": "b/2", "share": 1.0}]
    # in a build: plant an eval instance of a held-out category task into a training task
    path = mixed_config(tmp_path)
    nli = (tmp_path / "fx/flan/toy_nli.jsonl").read_text().splitlines()[0]
    premise = json.loads(nli)["premise"]
    with (tmp_path / "fx/seq2seq/crossfit_toy.jsonl").open("a") as f:
        f.write(json.dumps({"src": f"Premise: {premise}\nHypothesis: An animal is outside.\n"
                            "Does the premise entail the hypothesis?\nOPTIONS:\n- yes\n- no",
                            "tgt": "yes", "task": "planted", "category": "Mathematics"}) + "\n")
    manifest = build_bench(path, tmp_path / "out")
    pairs = json.loads((tmp_path / "out" / "report.json").read_text())["leakage"]["pairs"]
    assert any(p["train"].startswith("crossfit_planted/") and p["eval"].startswith(
        "flan_toy_nli/") for p in pairs)
    assert manifest["counts"]["leaks"] == len(pairs)


def test_leakage_drop_train_removes_the_leaking_training_instance(tmp_path):
    path = mixed_config(tmp_path, leakage={"action": "drop_train"})
    cfg = yaml.safe_load(path.read_text())
    cfg["held_out"]["instances"] = 0  # keep every planted record on the training side
    path.write_text(yaml.safe_dump(cfg))
    first = json.loads((tmp_path / "fx/flan/toy_nli.jsonl").read_text().splitlines()[0])
    with (tmp_path / "fx/seq2seq/crossfit_toy.jsonl").open("a") as f:
        for i in range(4):  # the first is a copy of the flan instance, the rest are clean
            src = (f"Premise: {first['premise']}\nHypothesis: {first['hypothesis']}\nDoes the "
                   "premise entail the hypothesis?\nOPTIONS:\n- yes\n- no") if i == 0 else \
                f"clean example number {i}"
            f.write(json.dumps({"src": src, "tgt": "yes" if i == 0 else "ok", "task": "planted",
                                "category": "Mathematics"}) + "\n")
    manifest = build_bench(path, tmp_path / "out")
    planted = next(t for t in manifest["tasks"] if t["name"] == "crossfit_planted")
    report = json.loads((tmp_path / "out/report.json").read_text())["leakage"]
    assert report["action"] == "drop_train" and len(report["pairs"]) >= 1
    assert planted["n_instances"] == 3  # 4 written, the leaking one dropped before training


def test_out_holding_other_files_is_refused_unless_overwrite(tmp_path):
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({"name": "m", "seed": 0, "tokenizer": "byte", "sources": [
        {"name": "superni", "format": "synthetic", "instances_per_task": 5, "num_tasks": 4}],
        "held_out": {"categories": [], "tasks_per_category": 0, "instances": 0.2}}))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OptimlError, match="not a bench .*--overwrite"):
        build_bench(cfg, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    build_bench(cfg, tmp_path / "b")  # a bench directory is its own output: rebuilt freely
    assert build_bench(cfg, tmp_path / "b", force=True)["up_to_date"] is False
    build_bench(cfg, mine, overwrite=True)
    assert (mine / "manifest.json").is_file() and not (mine / "notes.txt").exists()
