"""MMLU, BIG-Bench Hard and RAFT (§6.1) read from hand-made files in their release layouts, and
evaluated beside a bench: their splits, prompts, scoring and averaging."""

import json

import pytest

from optiml_engine.data.prompts import render
from optiml_engine.data.tokenizer import ByteTokenizer
from optiml_engine.errors import OptimlError
from optiml_engine.eval import harness
from optiml_engine.eval.harness import EvalSettings, evaluate_task, main
from optiml_engine.eval.suite import added_suite


def _mmlu(root, subjects=("astronomy", "virology")):
    for split, n in (("dev", 5), ("val", 1), ("test", 3)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for subject in subjects:
            rows = [f'"{subject} {split} question {i}, with a comma?",one,two,three,four,'
                    f'{"ABCD"[i % 4]}' for i in range(n)]
            (root / split / f"{subject}_{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_mmlu_five_shot_prompts_hold_five_dev_examples_and_never_the_query(tmp_path):
    suite = added_suite(f"mmlu={_mmlu(tmp_path / 'mmlu')}")
    assert [(et.name, et.level, len(et.instances), len(et.demo_pool)) for et in suite] == [
        ("mmlu_astronomy", "heldout_task", 3, 5), ("mmlu_virology", "heldout_task", 3, 5)]
    et = suite[0]
    first = et.instances[0]
    assert first.input == ("astronomy test question 0, with a comma?\nA. one\nB. two\n"
                           "C. three\nD. four")
    assert first.outputs == ["A"] and first.options == ["A", "B", "C", "D"]
    assert et.task.meta["task_group"] == "mmlu" and et.task.metric == "accuracy"
    for inst in et.instances:
        source, target = render(et.task, inst, shots=5, seed=0, pool=et.demo_pool)
        assert source.startswith("Definition: The following are multiple choice questions "
                                 "(with answers) about astronomy.\n\n")
        assert source.count("astronomy dev question") == 5
        assert all(f"astronomy dev question {i}," in source for i in range(5))
        assert source.count(inst.input) == 1 and source.endswith(f"{inst.input}\nOutput:")
        assert "test question" not in source.replace(inst.input, "")
        assert "val question" not in source and "Options:" not in source
        assert target == " " + inst.outputs[0]


def test_mmlu_is_ranked_over_the_four_letters(tiny_models, tmp_path):
    [et] = added_suite(f"mmlu={_mmlu(tmp_path / 'mmlu', ('astronomy',))}")
    recs = evaluate_task(tiny_models[0], ByteTokenizer(), et, 5, EvalSettings())
    assert [r["kind"] for r in recs] == ["rank"] * 3
    for r in recs:
        assert r["options"] == ["A", "B", "C", "D"] and len(r["log_likelihoods"]) == 4
        best = max(range(4), key=r["log_likelihoods"].__getitem__)
        assert r["prediction"] == "ABCD"[best]
        assert r["scores"]["score"] == (100.0 if r["prediction"] == r["references"][0] else 0.0)
        assert r["task_group"] == "mmlu"


def test_mmlu_bad_rows_name_the_file_and_line(tmp_path):
    root = _mmlu(tmp_path / "m", ("law",))
    (root / "test" / "law_test.csv").write_text("q,a,b,c,d,A\nq,a,b,c,E\n")
    with pytest.raises(OptimlError, match=r"law_test.csv:2: 5 columns, not 6"):
        added_suite(f"mmlu={root}")
    (root / "test" / "law_test.csv").write_text("q,a,b,c,d,E\n")
    with pytest.raises(OptimlError, match=r"law_test.csv:1: answer 'E' is not one of"):
        added_suite(f"mmlu={root}")
    (root / "dev" / "law_dev.csv").unlink()
    with pytest.raises(OptimlError, match="no law_dev.csv"):
        added_suite(f"mmlu={root}")


def _bbh(root):
    root.mkdir(parents=True)
    examples = [{"input": f"Is {i} even?", "target": "Yes" if i % 2 == 0 else "No"}
                for i in range(5)]
    (root / "parity.json").write_text(json.dumps({"canary": "x", "examples": examples}))
    return root


def test_bbh_three_shot_exact_match(tiny_models, tmp_path, monkeypatch):
    [et] = added_suite(f"bbh={_bbh(tmp_path / 'bbh')}")
    assert et.level == "heldout_category" and et.task.metric == "exact_match"
    assert [i.input for i in et.demo_pool] == ["Is 0 even?", "Is 1 even?", "Is 2 even?"]
    assert [i.input for i in et.instances] == ["Is 3 even?", "Is 4 even?"]
    assert EvalSettings().shots_for(et) == (3,)
    for inst in et.instances:
        source, _ = render(et.task, inst, shots=3, seed=0, pool=et.demo_pool)
        assert source.count("Input: ") == 4 and source.count(inst.input) == 1
        assert all(f"Input: {d.input}\nOutput: {d.outputs[0]}" in source for d in et.demo_pool)

    # the model "answers" "no." to every prompt: exact match (case and punctuation folded)
    # is right on "Is 3 even?" (No) and wrong on "Is 4 even?" (Yes)
    monkeypatch.setattr(harness, "greedy_generate",
                        lambda model, prompts, *a, **k: [ByteTokenizer().encode(" no.")
                                                         for _ in prompts])
    recs = evaluate_task(tiny_models[0], ByteTokenizer(), et, 3, EvalSettings(max_new_tokens=4))
    assert [(r["prediction"], r["scores"]["score"]) for r in recs] == [("no.", 100.0),
                                                                     ("no.", 0.0)]


def test_bbh_files_are_checked(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "t.json").write_text(json.dumps({"examples": [{"input": "x"}] * 4}))
    with pytest.raises(OptimlError, match=r"t.json: examples\[0\]: field 'target' is missing"):
        added_suite(f"bbh={tmp_path / 'b'}")
    (tmp_path / "b" / "t.json").write_text(json.dumps({"examples": [{"input": "x",
                                                                     "target": "y"}] * 3}))
    with pytest.raises(OptimlError, match="none left to score"):
        added_suite(f"bbh={tmp_path / 'b'}")


def _raft(root, numeric=False):
    task = root / "tweet_complaints"
    task.mkdir(parents=True)
    labels = ["1", "2", "2", "1"] if numeric else ["complaint", "no complaint",
                                                   "no complaint", "complaint"]
    rows = ["Tweet text,ID,Label"] + [f'"tweet {i}, long",{i},{lab}'
                                      for i, lab in enumerate(labels)]
    (task / "train.csv").write_text("\n".join(rows) + "\n")
    (task / "test.csv").write_text("Tweet text,ID,Label\nhidden one,10,\n")
    return root


def test_raft_label_rank_classification_on_the_train_rows_when_test_labels_are_hidden(
        tmp_path, tiny_models):
    [et] = added_suite(f"raft={_raft(tmp_path / 'raft')}")
    assert et.name == "raft_tweet_complaints" and et.level == "heldout_category"
    assert et.task.meta["eval_split"] == "train (leave-one-out)"
    assert [i.id for i in et.instances] == [i.id for i in et.demo_pool] == [
        f"raft_tweet_complaints-train-{i}" for i in range(4)]
    first = et.instances[0]
    assert first.input == "Tweet text: tweet 0, long" and first.outputs == ["complaint"]
    assert first.options == ["complaint", "no complaint"]
    for inst in et.instances:  # an instance is never its own demonstration
        source, _ = render(et.task, inst, shots=3, seed=0, pool=et.demo_pool)
        assert source.count(inst.input) == 1 and source.count("Input: ") == 4
    recs = evaluate_task(tiny_models[0], ByteTokenizer(), et, 0, EvalSettings())
    assert [r["kind"] for r in recs] == ["rank"] * 4


def test_raft_numeric_labels_need_their_names(tmp_path):
    root = _raft(tmp_path / "raft", numeric=True)
    with pytest.raises(OptimlError, match="labels.txt"):
        added_suite(f"raft={root}")
    (root / "tweet_complaints" / "labels.txt").write_text("complaint\nno complaint\n")
    [et] = added_suite(f"raft={root}")
    assert [i.outputs[0] for i in et.instances] == ["complaint", "no complaint",
                                                    "no complaint", "complaint"]


def test_suite_spec_errors():
    for spec in ("mmlu", "squad=/x", "mmlu=/x@level9"):
        with pytest.raises(OptimlError, match="--suite"):
            added_suite(spec)


def test_cli_evaluates_added_benchmarks_beside_a_bench(tiny_hf_dir, tmp_path):
    """An eval manifest with BBH, plus MMLU through --suite: BBH at 3 shots only, MMLU at 0 and
    5, the report's benchmark rows counting MMLU's subjects as one task."""
    _bbh(tmp_path / "bbh")
    (tmp_path / "eval.json").write_text(json.dumps(
        {"tasks": [{"path": "bbh", "format": "bbh", "level": "heldout_category"}]}))
    code = main(["--checkpoint", str(tiny_hf_dir), "--bench", str(tmp_path / "eval.json"),
                 "--suite", f"mmlu={_mmlu(tmp_path / 'mmlu')}", "--tokenizer", "byte",
                 "--out", str(tmp_path / "out"), "--max-new-tokens", "2"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    pairs = sorted({(r["benchmark"], r["shots"]) for r in results["instances"]})
    assert pairs == [("bbh", 3), ("mmlu", 0), ("mmlu", 5)]
    assert len(results["instances"]) == 2 + 2 * 3 * 2  # BBH 2 scored; MMLU 2 x 3, 2 shots
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| level | benchmark | tasks | 0-shot | 3-shot | 5-shot | 0/5-shot avg |" in report
    assert "| 2. held-out tasks of seen categories | mmlu | 1 |" in report
    assert "| 1. held-out categories | bbh | 1 | - |" in report
