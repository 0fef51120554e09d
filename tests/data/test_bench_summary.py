"""`optiml data build` prints the paper's Table-1-style summary: per benchmark its categories,
tasks, instances, prompts per task, the train / dev / test split and the tasks each bench rule
removed, then the reasons. Checked cell by cell against counts worked out by hand."""

import statistics

import yaml

from optiml_engine.data.bench import main
from optiml_engine.data.bench_store import BuiltBench
from tests.data.test_bench_paper_rules import dedup_layout, excluded_layout, leakage_layout


def build_and_print(tmp_path, capsys) -> list[str]:
    sources = dedup_layout(tmp_path)
    excluded_layout(tmp_path)  # the same Super-NI checkout (ni/) gets these tasks too
    leakage_layout(tmp_path)
    config = {"name": "t1", "seed": 1, "tokenizer": "byte", "max_example_tokens": 600,
              "sources": sources, "categories": {"toyqa": "Question Answering"},
              "dedup": {"policy": "paper"},
              "held_out": {"categories": ["Grammar Error Correction", "Coreference Resolution"],
                           "instances": 0, "dev_categories": ["Grammar Error Correction"]},
              "leakage": {"unit": "task", "action": "drop_train", "superni_excluded": "drop"}}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    assert main(["build", str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "out")]) == 0
    return capsys.readouterr().out.splitlines()


def cells(lines: list[str], first: str) -> list[str]:
    (line,) = [ln for ln in lines if ln.split() and ln.split()[0] == first]
    return line.split()


def token_stats(out, benchmark: str | None) -> list[str]:
    """Mean and population std of the training examples' tokens, from the rows themselves."""
    bench = BuiltBench(out)
    lengths = [sum(len(part) for part in bench.example(t["train_row_offset"] + k))
               for t in bench.manifest["tasks"] if benchmark in (None, t["benchmark"])
               for k in range(t["n_train"])]
    return [f"{statistics.fmean(lengths):.0f}", f"{statistics.pstdev(lengths):.0f}"]


def test_table_one_counts_tasks_splits_and_removals_per_benchmark(tmp_path, capsys):
    lines = build_and_print(tmp_path, capsys)
    out = tmp_path / "out"
    for name in ("superni", "promptsource", "crossfit", "total"):  # the length columns
        row = cells(lines, name)
        assert row[7:9] == token_stats(out, None if name == "total" else name), name
        del row[7:9]
        lines = [" ".join(row) if ln.split()[:1] == [name] else ln for ln in lines]
    # kept Super-NI tasks: 9101 (QA, 4 instances, train), 9203 (QA, 4, train), 9303 (QA, 21,
    # train), 9201 (Coreference, 4, level 1 test), 9301 (GEC, 200, level 1 dev); removed: 9202
    # (excluded_tasks.txt) and 9302 (2% 13-gram leakage into 9301)
    # columns (less the two length ones): categories, tasks, instances, prompts/task, train,
    # train ex., dev, test, L3, removed duplicate/excluded/leakage
    assert cells(lines, "superni") == ["superni", "3", "5", "233", "1.0", "3", "29", "1", "1",
                                       "0", "0/1/1"]
    assert cells(lines, "promptsource") == ["promptsource", "1", "1", "4", "1.0", "1", "4", "0",
                                            "0", "0", "0/0/0"]
    # crossfit_toyqa dropped (its dataset is in Super-NI and PromptSource, §2.1)
    assert cells(lines, "crossfit") == ["crossfit", "1", "1", "4", "1.0", "1", "4", "0", "0",
                                        "0", "1/0/0"]
    assert cells(lines, "total") == ["total", "3", "7", "241", "1.0", "5", "37", "1", "1", "0",
                                     "1/1/1"]
    split = {" ".join(ln.split()[:-3]): ln.split()[-3:] for ln in lines
             if ln.startswith(("train ", "dev ", "test "))}
    assert split == {"train": ["5", "1", "37"], "dev level 1": ["1", "1", "200"],
                     "dev level 2": ["0", "0", "0"], "dev level 3": ["0", "0", "0"],
                     "test level 1": ["1", "1", "4"], "test level 2": ["0", "0", "0"],
                     "test level 3": ["0", "0", "0"]}
    removed = [ln for ln in lines if ln.startswith("removed (")]
    assert [ln.split(":")[0] for ln in removed] == ["removed (duplicate, 1)",
                                                    "removed (excluded, 1)",
                                                    "removed (leakage, 1)"]
    assert "crossfit_toyqa: duplicate: dataset toyqa of crossfit also in promptsource, " \
           "superni" in removed[0]
    assert "task9302_toyleak_two_percent: leakage: 2.0%" in removed[2]


def test_manifest_says_dev_or_test_for_every_evaluation_task(tmp_path, capsys):
    build_and_print(tmp_path, capsys)
    import json

    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    roles = {t["name"]: t["eval_role"] for t in manifest["tasks"]}
    assert roles == {"task9101_toyqa_answer": None, "toyqa_copy": None,
                     "crossfit_onlyhere": None, "task9201_toywino_fill": "test",
                     "task9203_toyother_answer": None, "task9301_toygec_correction": "dev",
                     "task9303_toyleak_half_percent": None}
