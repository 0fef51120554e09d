"""OPT-IML's bench rules (§2.1, §2.3, Table 15) on hand-made collections in the real formats:
cross-benchmark dedup, the held-out levels, Super-NI's excluded tasks, task-pair leakage."""

import json
from pathlib import Path

import yaml

from optiml_engine.data.bench import build_bench, summary
from optiml_engine.data.bench_config import load_bench_config

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
         "zulu").split()


def sentence(i: int, words: int = 16, salt: str = "") -> str:
    """A distinct sentence per (i, salt): no 13-gram is shared between two of them."""
    return " ".join(f"{WORDS[(i * 7 + k) % len(WORDS)]}{salt}{i}x{k}" for k in range(words))


def superni_task(root: Path, name: str, category: str, source: str, inputs: list[str],
                 outputs: list[str] | None = None) -> None:
    outputs = outputs or [f"out {k}" for k in range(len(inputs))]
    task = {
        "Contributors": ["optiml-engine tests"], "Source": [source], "URL": ["https://x"],
        "Categories": [category], "Reasoning": [], "Definition": [f"Do the {name} task."],
        "Input_language": ["English"], "Output_language": ["English"],
        "Instruction_language": ["English"], "Domains": ["Tests"],
        "Positive Examples": [{"input": "a", "output": "b", "explanation": "c"}],
        "Negative Examples": [],
        "Instances": [{"id": f"{name.split('_')[0]}-{k:04d}", "input": text, "output": [out]}
                      for k, (text, out) in enumerate(zip(inputs, outputs, strict=True))],
        "Instance License": ["CC0"]}
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "tasks" / f"{name}.json").write_text(json.dumps(task, indent=4))


def split_files(root: Path, **lists: list[str]) -> None:
    (root / "splits/default").mkdir(parents=True, exist_ok=True)
    for split, names in lists.items():
        (root / f"splits/default/{split}_tasks.txt").write_text("".join(n + "\n" for n in names))


def promptsource_dataset(root: Path, dataset: str, subset: str | None, rows: list[dict]) -> None:
    where = root / dataset / (subset or "")
    where.mkdir(parents=True, exist_ok=True)
    (where / "templates.yaml").write_text(
        f"dataset: {dataset}\nsubset: {subset or 'null'}\ntemplates:\n"
        "  aa000000-0000-4000-8000-000000000001: !Template\n"
        "    answer_choices: null\n    id: aa000000-0000-4000-8000-000000000001\n"
        "    jinja: '{{text}} ||| {{answer}}'\n"
        "    metadata: !TemplateMetadata\n      choices_in_prompt: false\n"
        "      languages:\n      - en\n      metrics:\n      - ROUGE\n      original_task: true\n"
        "    name: copy\n    reference: ''\n")
    (where / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def seq2seq_file(path: Path, task: str, rows: list[tuple[str, str]], category: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for src, tgt in rows:
            f.write(json.dumps({"src": src, "tgt": tgt, "task": task, "category": category})
                    + "\n")


def build(tmp_path: Path, sources: list[dict], **cfg) -> tuple[dict, dict, dict]:
    """Build; returns ({task name: manifest entry}, report, manifest)."""
    config = {"name": "paper", "seed": 1, "tokenizer": "byte", "max_example_tokens": 600,
              "sources": sources, "held_out": {"instances": 0}, **cfg}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    manifest = build_bench(path, tmp_path / "out", force=True)
    report = json.loads((tmp_path / "out/report.json").read_text())
    return {t["name"]: t for t in manifest["tasks"]}, report, manifest


# ---- §2.1: cross-benchmark dedup ---------------------------------------------------------------

def dedup_layout(tmp_path: Path) -> list[dict]:
    superni_task(tmp_path / "ni", "task9101_toyqa_answer", "Question Answering", "toyqa",
                 [sentence(i) for i in range(4)])
    promptsource_dataset(tmp_path / "ps", "toyqa", None,
                         [{"text": sentence(i, salt="p"), "answer": f"a{i}"} for i in range(4)])
    seq2seq_file(tmp_path / "cf/toyqa.jsonl", "toyqa", [(sentence(i, salt="c"), "x")
                                                         for i in range(4)], "Question Answering")
    seq2seq_file(tmp_path / "cf/onlyhere.jsonl", "onlyhere",
                 [(sentence(i, salt="o"), "y") for i in range(4)], "Question Answering")
    return [{"name": "superni", "format": "superni", "path": "ni"},
            {"name": "promptsource", "format": "promptsource", "path": "ps"},
            {"name": "crossfit", "format": "seq2seq", "path": "cf"}]


def test_paper_dedup_keeps_superni_and_promptsource_copies_drops_the_crossfit_copy(tmp_path):
    tasks, report, _ = build(tmp_path, dedup_layout(tmp_path), dedup={"policy": "paper"},
                             categories={"toyqa": "Question Answering"})
    assert sorted(tasks) == ["crossfit_onlyhere", "task9101_toyqa_answer", "toyqa_copy"]
    dropped = {s["where"]: s["reason"] for s in report["skipped"] if "duplicate" in s["reason"]}
    assert list(dropped) == ["crossfit_toyqa"]
    assert "also in promptsource, superni" in dropped["crossfit_toyqa"]


def test_one_copy_dedup_stays_reachable(tmp_path):
    tasks, report, _ = build(tmp_path, dedup_layout(tmp_path),
                             dedup={"policy": "one_copy", "prefer": ["superni"]},
                             categories={"toyqa": "Question Answering"})
    assert sorted(tasks) == ["crossfit_onlyhere", "task9101_toyqa_answer"]
    dropped = sorted(s["where"] for s in report["skipped"] if "duplicate" in s["reason"])
    assert dropped == ["crossfit_toyqa", "toyqa_copy"]


# ---- §2.3: data-source separation: Super-NI's excluded_tasks.txt ------------------------------

def excluded_layout(tmp_path: Path) -> list[dict]:
    ni = tmp_path / "ni"
    superni_task(ni, "task9201_toywino_fill", "Coreference Resolution", "toywino",
                 [sentence(i, salt="w") for i in range(4)])
    superni_task(ni, "task9202_toywino_question", "Question Answering", "toywino",
                 [sentence(i, salt="q") for i in range(4)])
    superni_task(ni, "task9203_toyother_answer", "Question Answering", "toyother",
                 [sentence(i, salt="o") for i in range(4)])
    split_files(ni, train=["task9203_toyother_answer"], test=["task9201_toywino_fill"],
                excluded=["task9202_toywino_question"])
    return [{"name": "superni", "format": "superni", "path": "ni"}]


def test_superni_excluded_task_is_not_trained(tmp_path):
    tasks, report, manifest = build(tmp_path, excluded_layout(tmp_path),
                                    leakage={"superni_excluded": "drop"})
    assert sorted(tasks) == ["task9201_toywino_fill", "task9203_toyother_answer"]
    excluded = [s["where"] for s in report["skipped"] if s["reason"].startswith("excluded")]
    assert excluded == ["task9202_toywino_question"]
    tasks, _, _ = build(tmp_path, excluded_layout(tmp_path), leakage={"superni_excluded": "keep"})
    assert tasks["task9202_toywino_question"]["split"] == "train"
    assert tasks["task9202_toywino_question"]["n_train"] == 4


# ---- §2.3: task-pair leakage, 13-grams on more than 1% of an eval task's examples --------------

def leakage_layout(tmp_path: Path) -> list[dict]:
    ni = tmp_path / "ni"
    evals = [sentence(i, salt="e") for i in range(200)]
    superni_task(ni, "task9301_toygec_correction", "Grammar Error Correction", "toygec", evals)
    clean = [sentence(i, salt="t") for i in range(20)]
    superni_task(ni, "task9302_toyleak_two_percent", "Question Answering", "toyleak2",
                 evals[:4] + clean)  # 4 / 200 = 2% of the eval task's examples
    superni_task(ni, "task9303_toyleak_half_percent", "Question Answering", "toyleak05",
                 evals[10:11] + [sentence(i, salt="u") for i in range(20)])  # 1 / 200 = 0.5%
    return [{"name": "superni", "format": "superni", "path": "ni"}]


def test_task_leaking_into_two_percent_of_an_eval_task_is_removed_half_percent_kept(tmp_path):
    tasks, report, manifest = build(
        tmp_path, leakage_layout(tmp_path),
        held_out={"categories": ["Grammar Error Correction"], "instances": 0},
        leakage={"unit": "task", "threshold": 0.01, "action": "drop_train"})
    assert sorted(tasks) == ["task9301_toygec_correction", "task9303_toyleak_half_percent"]
    assert report["leakage"]["pairs"] == [
        {"train": "task9302_toyleak_two_percent", "eval": "task9301_toygec_correction",
         "share": 0.02, "examples": 4}]
    removed = [s for s in report["skipped"] if s["reason"].startswith("leakage")]
    assert [s["where"] for s in removed] == ["task9302_toyleak_two_percent"]
    assert "2.0% of eval task task9301_toygec_correction" in removed[0]["reason"]
    assert manifest["removed"] == {"duplicate": 0, "excluded": 0, "leakage": 1}
    assert "1 skipped (1 leakage), 1 leakage pairs" in summary(manifest, tmp_path / "out")


def test_task_leakage_report_only_keeps_the_task_and_lists_the_pair(tmp_path):
    tasks, report, _ = build(tmp_path, leakage_layout(tmp_path),
                             held_out={"categories": ["Grammar Error Correction"], "instances": 0},
                             leakage={"unit": "task", "action": "report"})
    assert report["leakage"]["threshold"] == 0.01  # the paper's 1% is the task-unit default
    assert tasks["task9302_toyleak_two_percent"]["n_train"] == 24
    assert [p["train"] for p in report["leakage"]["pairs"]] == ["task9302_toyleak_two_percent"]


# ---- §2.3, Table 15, §5.2, §5.5: the held-out levels of recipes/bench/opt-iml.yaml --------------

RECIPE = yaml.safe_load((Path(__file__).parents[2] / "recipes/bench/opt-iml.yaml").read_text())


def levels_layout(tmp_path: Path) -> list[dict]:
    ni = tmp_path / "ni"
    rows = [sentence(i, salt="r") for i in range(4)]
    superni_task(ni, "task9401_toy_jfleg_correction", "Grammar Error Correction", "jfleg", rows)
    superni_task(ni, "task9402_toy_race_answer", "Question Answering", "race", rows)
    superni_task(ni, "task9403_toy_civil_comments_toxic", "Toxic Language Detection",
                 "civil_comments", rows)
    superni_task(ni, "task9404_toy_squad_answer", "Question Answering", "squad1.1", rows)
    superni_task(ni, "task9405_toy_wic_sense", "Word Semantics", "wic", rows)
    superni_task(ni, "task9406_toy_hellaswag_ending", "Sentence Composition", "hellaswag", rows)
    ps = tmp_path / "ps"
    promptsource_dataset(ps, "race", "high", [{"text": r, "answer": "a"} for r in rows])
    promptsource_dataset(ps, "super_glue", "wic", [{"text": r, "answer": "b"} for r in rows])
    promptsource_dataset(ps, "ai2_arc", "ARC-Challenge", [{"text": r, "answer": "c"}
                                                          for r in rows])
    seq2seq_file(tmp_path / "skg/dart.jsonl", "dart", [(r, "d") for r in rows], "Data to Text")
    seq2seq_file(tmp_path / "skg/totto.jsonl", "totto", [(r, "e") for r in rows], "Data to Text")
    seq2seq_file(tmp_path / "cot/gsm8k.jsonl", "gsm8k", [(r, "f") for r in rows],
                 "Chain-of-Thought Reasoning")
    return [{"name": "superni", "format": "superni", "path": "ni"},
            {"name": "promptsource", "format": "promptsource", "path": "ps"},
            {"name": "unifiedskg", "format": "seq2seq", "path": "skg"},
            {"name": "reasoning", "format": "seq2seq", "path": "cot"}]


def test_recipe_levels_gec_level1_partial_datasets_level2_wic_hellaswag_dart_held_out(tmp_path):
    held = {**RECIPE["held_out"], "instances": 1}
    categories = {"race/high": "Question Answering", "super_glue/wic": "Word Semantics",
                  "ai2_arc/ARC-Challenge": "Question Answering"}
    tasks, report, _ = build(tmp_path, levels_layout(tmp_path), held_out=held,
                             categories=categories, dedup=RECIPE["dedup"])
    split = {name: t["split"] for name, t in tasks.items()}
    assert split == {
        "task9401_toy_jfleg_correction": "heldout_category",  # Grammar Error Correction
        "task9405_toy_wic_sense": "heldout_category",  # WiC, §5.2
        "super_glue_wic_copy": "heldout_category",
        "task9406_toy_hellaswag_ending": "heldout_category",  # HellaSwag, §5.2
        "unifiedskg_dart": "heldout_category",  # DART, §5.5
        "task9402_toy_race_answer": "heldout_task",  # RACE
        "race_high_copy": "heldout_task",
        "ai2_arc_arc_challenge_copy": "heldout_task",  # ARC
        "task9403_toy_civil_comments_toxic": "heldout_task",  # Civil Comments
        "reasoning_gsm8k": "heldout_task",  # GSM8K
        "task9404_toy_squad_answer": "train",
        "unifiedskg_totto": "train"}
    assert all(tasks[n]["n_train"] == 0 for n, s in split.items() if s != "train")
    assert tasks["task9404_toy_squad_answer"]["n_train"] == 3
    notes = " ".join(report["notes"])
    assert "with no task in the bench" in notes and "newsroom" in notes and "race" not in notes


def test_without_level_lists_those_datasets_are_trained(tmp_path):
    tasks, _, _ = build(tmp_path, levels_layout(tmp_path),
                        held_out={"categories": ["Grammar Error Correction"], "instances": 1},
                        categories={"race/high": "Question Answering",
                                    "super_glue/wic": "Word Semantics",
                                    "ai2_arc/ARC-Challenge": "Question Answering"})
    trained = sorted(n for n, t in tasks.items() if t["split"] == "train")
    assert trained == sorted(set(tasks) - {"task9401_toy_jfleg_correction"})


# ---- §2.3 level 3: the original validation / test sets of training tasks ------------------------

def level3_layout(tmp_path: Path) -> list[dict]:
    ps = tmp_path / "ps"
    promptsource_dataset(ps, "toyrev", None, [{"text": sentence(i, salt="a"), "answer": "t"}
                                              for i in range(3)])
    (ps / "toyrev/validation.jsonl").write_text("".join(
        json.dumps({"text": sentence(i, salt="v"), "answer": "v"}) + "\n" for i in range(2)))
    promptsource_dataset(ps, "toytrainonly", None, [{"text": sentence(i, salt="b"), "answer": "t"}
                                                    for i in range(3)])
    flan = tmp_path / "flan"
    (flan / "toynli").mkdir(parents=True)
    (flan / "templates.json").write_text(json.dumps({"toynli": [["{premise}", "{answer}"]]}))
    for split, n in (("train", 3), ("test", 2)):
        (flan / f"toynli/{split}.jsonl").write_text("".join(
            json.dumps({"premise": sentence(i, salt=split), "answer": split}) + "\n"
            for i in range(n)))
    cf = tmp_path / "cf/toyqa.jsonl"
    cf.parent.mkdir(parents=True)
    cf.write_text("".join(json.dumps({"src": sentence(i, salt="c"), "tgt": "x", "id": f"q{i}",
                                      "split": "dev" if i == 3 else "train"}) + "\n"
                          for i in range(4)))
    superni_task(tmp_path / "ni", "task9501_toy_answer", "Question Answering", "toyni",
                 [sentence(i, salt="n") for i in range(4)])
    return [{"name": "superni", "format": "superni", "path": "ni"},
            {"name": "promptsource", "format": "promptsource", "path": "ps"},
            {"name": "flan", "format": "flan", "path": "flan"},
            {"name": "crossfit", "format": "seq2seq", "path": "cf"}]


def test_level3_source_splits_holds_out_the_original_validation_and_test_rows(tmp_path):
    _, _, manifest = build(tmp_path, level3_layout(tmp_path),
                           held_out={"level3": "source_splits", "instances": 2},
                           categories={"toyrev": "Sentiment Analysis", "toytrainonly":
                                       "Sentiment Analysis", "toynli": "Question Answering",
                                       "toyqa": "Question Answering"})
    records = {json.loads(line)["name"]: json.loads(line) for line in
               (tmp_path / "out/tasks.jsonl").read_text().splitlines()}
    inputs = {name: {i["id"]: i["input"] for i in r["instances"]} for name, r in records.items()}
    assert sorted(inputs["toyrev_copy"][i] for i in records["toyrev_copy"]["eval_ids"]) == \
        sorted(sentence(i, salt="v") for i in range(2))
    assert records["toytrainonly_copy"]["eval_ids"] == []
    assert sorted(inputs["flan_toynli"][i] for i in records["flan_toynli"]["eval_ids"]) == \
        sorted(sentence(i, salt="test") for i in range(2))
    assert records["crossfit_toyqa"]["eval_ids"] == ["q3"]
    assert len(records["task9501_toy_answer"]["eval_ids"]) == 2  # no split: `instances` random
    n_train = {t["name"]: t["n_train"] for t in manifest["tasks"]}
    assert n_train == {"toyrev_copy": 3, "toytrainonly_copy": 3, "flan_toynli": 3,
                       "crossfit_toyqa": 3, "task9501_toy_answer": 2}


def test_level3_random_ignores_the_source_splits(tmp_path):
    _, _, manifest = build(tmp_path, level3_layout(tmp_path), held_out={"instances": 1},
                           categories={"toyrev": "Sentiment Analysis", "toytrainonly":
                                       "Sentiment Analysis", "toynli": "Question Answering",
                                       "toyqa": "Question Answering"})
    assert {t["name"]: t["n_eval"] for t in manifest["tasks"]} == {
        "toyrev_copy": 1, "toytrainonly_copy": 1, "flan_toynli": 1, "crossfit_toyqa": 1,
        "task9501_toy_answer": 1}


def test_opt_iml_recipe_defaults_are_the_papers(monkeypatch):
    monkeypatch.setenv("OPTIML_DATA", "/nowhere")
    monkeypatch.setenv("OPT_TOKENIZER", "byte")
    cfg = load_bench_config(Path(__file__).parents[2] / "recipes/bench/opt-iml.yaml")
    assert (cfg.dedup_policy, cfg.dedup_drop_from) == ("paper", ["crossfit", "exmix", "t5"])
    leak = cfg.leakage
    assert (leak.unit, leak.n, leak.threshold, leak.action, leak.superni_excluded) == (
        "task", 13, 0.01, "drop_train", "drop")
    assert "Grammar Error Correction" in cfg.held_out.categories
    assert cfg.held_out.level1_datasets == ["wic", "hellaswag", "dart"]
    assert cfg.held_out.level3 == "source_splits"
