"""PromptSource tasks as OPT-IML Bench makes them (Table 1, §4.1): a dataset's templates merged
into one task whose records each get a randomly drawn template (deterministic from the seed), so
caps, EPS weights and the level-3 holdout are per dataset; P3's one task per template stays
reachable (`task_per: template`). Rows are read from JSONL, parquet or `save_to_disk`."""

import json
from pathlib import Path

import pytest
import yaml

from optiml_engine.data.bench import build_bench
from optiml_engine.data.bench_config import load_bench_config
from optiml_engine.data.bench_store import BuiltBench
from optiml_engine.data.sampling import SamplingSpec, mixture_probabilities
from optiml_engine.data.sources import load_tasks
from optiml_engine.errors import OptimlError
from tests.data.opt_iml_collection import PS_TEMPLATES
from tests.data.test_bench_paper_rules import sentence

# the three templates of PS_TEMPLATES, written out by hand: (name, input for a record's text)
BY_HAND = {"good or bad": lambda t: f"{t} Is this good or bad?",
           "verdict": lambda t: f"Text: {t} Verdict?",
           "how was it": lambda t: f"{t} How was it?"}
CONDITIONAL = """  b1000000-0000-4000-8000-000000000004: !Template
    answer_choices: null
    id: b1000000-0000-4000-8000-000000000004
    jinja: '{% if label == 1 %}Praise: {{text}} ||| yes{% endif %}'
    metadata: !TemplateMetadata
      choices_in_prompt: false
      languages: [en]
      metrics: [ROUGE]
      original_task: false
    name: praise
    reference: ''
"""


def rows(n: int, salt: str = "r") -> list[dict]:
    return [{"text": sentence(i, salt=salt), "label": i % 2} for i in range(n)]


def ps_dataset(root: Path, dataset: str, records: dict[str, list[dict]], extra: str = "",
               only_first: bool = False) -> Path:
    """templates.yaml (the 3 templates, or only the first) and JSONL files {split: rows}."""
    where = root / dataset
    where.mkdir(parents=True, exist_ok=True)
    text = PS_TEMPLATES.format(dataset=dataset)
    if only_first:
        text = text.split("  b1000000-0000-4000-8000-000000000002")[0]
    (where / "templates.yaml").write_text(text + extra)
    for split, rs in records.items():
        (where / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return where


def template_of(text: str, record_text: str) -> str:
    """Which hand-written template produced `text` for a record."""
    (name,) = [n for n, f in BY_HAND.items() if f(record_text) == text]
    return name


def test_a_dataset_with_three_templates_is_one_task_whose_examples_use_all_three(tmp_path):
    records = rows(30)
    ps_dataset(tmp_path, "toy_reviews", {"train": records})
    (task,) = load_tasks(tmp_path, "promptsource", task_per="dataset", seed=3)
    assert (task.name, task.dataset, task.benchmark) == ("toy_reviews", "toy_reviews",
                                                         "promptsource")
    assert [i.id for i in task.instances] == [f"toy_reviews-{k}" for k in range(30)]
    used = [template_of(inst.input, rec["text"])
            for inst, rec in zip(task.instances, records, strict=True)]
    assert sorted(set(used)) == sorted(BY_HAND)
    assert task.meta["instance_templates"] == dict(zip([i.id for i in task.instances], used,
                                                       strict=True))
    assert [i.outputs for i in task.instances] == [[["bad", "good"][r["label"]]]
                                                   for r in records]
    assert task.metric == "accuracy" and task.instances[0].options == ["bad", "good"]
    # deterministic from the seed; another seed draws other templates
    (again,) = load_tasks(tmp_path, "promptsource", task_per="dataset", seed=3)
    assert [i.input for i in again.instances] == [i.input for i in task.instances]
    (other,) = load_tasks(tmp_path, "promptsource", task_per="dataset", seed=4)
    assert [i.input for i in other.instances] != [i.input for i in task.instances]


def test_template_per_task_stays_reachable(tmp_path):
    ps_dataset(tmp_path, "toy_reviews", {"train": rows(5)})
    tasks = load_tasks(tmp_path, "promptsource")  # the code default: P3's layout
    assert sorted(t.name for t in tasks) == ["toy_reviews_good_or_bad", "toy_reviews_how_was_it",
                                             "toy_reviews_verdict"]
    assert all(len(t.instances) == 5 for t in tasks)


def test_a_record_whose_drawn_template_renders_nothing_takes_another(tmp_path):
    """The conditional template renders only for label 1; no record is lost, and every record
    it would have rendered empty for got one of the other templates."""
    records = rows(40)
    ps_dataset(tmp_path, "toy_reviews", {"train": records}, extra=CONDITIONAL)
    (task,) = load_tasks(tmp_path, "promptsource", task_per="dataset", seed=0)
    assert len(task.instances) == 40 and task.meta["skipped_empty"] == 0
    used = task.meta["instance_templates"]
    assert {used[f"toy_reviews-{k}"] for k in range(0, 40, 2)} <= set(BY_HAND)
    assert "praise" in {used[f"toy_reviews-{k}"] for k in range(1, 40, 2)}
    # mixed targets (a free-form template among choice ones): generated, no options kept
    assert task.metric == "rouge_l" and all(i.options is None for i in task.instances)


def bench(tmp_path: Path, task_per: str, **source) -> dict:
    config = {"name": "ps", "seed": 1, "tokenizer": "byte", "max_example_tokens": 600,
              "sources": [{"name": "promptsource", "format": "promptsource", "path": "ps",
                           "task_per": task_per, **source}],
              "categories": {"toy_big": "Sentiment Analysis", "toy_small": "Sentiment Analysis"},
              "held_out": {"level3": "source_splits", "instances": 0}}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    manifest = build_bench(tmp_path / "bench.yaml", tmp_path / f"out-{task_per}", force=True)
    return {t["name"]: t for t in manifest["tasks"]}


def test_caps_level3_and_eps_weights_are_per_dataset(tmp_path):
    # toy_big: 3 templates, 40 train + 6 validation rows; toy_small: 1 template, 16 train rows
    ps_dataset(tmp_path / "ps", "toy_big", {"train": rows(40, "b"), "validation": rows(6, "v")})
    ps_dataset(tmp_path / "ps", "toy_small", {"train": rows(16, "s")}, only_first=True)
    merged = bench(tmp_path, "dataset")
    assert sorted(merged) == ["toy_big", "toy_small"]
    # level 3 (§2.3, source splits): the 6 validation rows of the dataset, once
    assert (merged["toy_big"]["n_train"], merged["toy_big"]["n_eval"]) == (40, 6)
    # EPS with a cap of 20, by hand: min(40, 20) = 20 against 16
    spec = SamplingSpec(scheme="eps", eps_cap=20)
    names = sorted(merged)
    probs = mixture_probabilities([merged[n]["n_train"] for n in names], ["promptsource"] * 2,
                                  spec)
    assert probs.tolist() == pytest.approx([20 / 36, 16 / 36], abs=1e-12)
    # the prompt of every instance is kept in the built bench, for per-prompt evaluation
    (big,) = [t for t in BuiltBench(tmp_path / "out-dataset").tasks() if t.name == "toy_big"]
    assert len(big.meta["instance_templates"]) == 46
    assert set(big.meta["instance_templates"].values()) == set(BY_HAND)
    per_template = bench(tmp_path, "template")
    assert len(per_template) == 4  # 3 + 1: each template its own task, its own weight
    big = [n for n in per_template if n.startswith("toy_big")]
    probs = mixture_probabilities([per_template[n]["n_train"] for n in per_template],
                                  ["promptsource"] * 4, spec)
    assert sum(p for n, p in zip(per_template, probs, strict=True) if n in big) == \
        pytest.approx(60 / 76, abs=1e-12)
    # the per-task cap counts the dataset's records, not one template's
    capped = bench(tmp_path, "dataset", cap=10)
    assert capped["toy_big"]["n_instances"] == 10 and capped["toy_small"]["n_instances"] == 10


def test_task_per_is_checked(tmp_path):
    for source, what in (({"format": "promptsource", "task_per": "prompt"}, "task_per"),
                         ({"format": "seq2seq", "task_per": "dataset"}, "applies to promptsource")):
        (tmp_path / "b.yaml").write_text(yaml.safe_dump(
            {"sources": [{"name": "x", "path": "x", **source}]}))
        with pytest.raises(OptimlError, match=what):
            load_bench_config(tmp_path / "b.yaml")


# ---- rows on disk: parquet and save_to_disk read like JSONL ----------------------------------

def test_parquet_and_save_to_disk_rows_make_the_same_task_as_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")
    train, validation = rows(12, "t"), rows(4, "v")
    reference = ps_dataset(tmp_path / "jsonl", "toy_reviews", {"train": train,
                                                               "validation": validation})
    parquet = ps_dataset(tmp_path / "parquet", "toy_reviews", {})
    datasets.Dataset.from_list(train).to_parquet(str(parquet / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(validation).to_parquet(str(parquet / "validation.parquet"))
    saved = ps_dataset(tmp_path / "saved", "toy_reviews", {})
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "validation": datasets.Dataset.from_list(validation)}
                         ).save_to_disk(str(saved))
    one_split = ps_dataset(tmp_path / "one_split", "toy_reviews", {"validation": validation})
    datasets.Dataset.from_list(train).save_to_disk(str(one_split / "train"))

    def read(root):
        (task,) = load_tasks(root, "promptsource", task_per="dataset", seed=5)
        splits = task.meta["instance_splits"]
        return [(i.input, i.outputs, splits[i.id]) for i in task.instances]

    # rows are read in name order: train before validation, as the JSONL reference has them
    expected = read(tmp_path / "jsonl")
    assert [s for *_, s in expected] == ["train"] * 12 + ["validation"] * 4
    for root in (parquet, saved, one_split):
        got = read(root.parent)
        assert [(o, s) for _, o, s in got] == [(o, s) for _, o, s in expected], root.name
        assert [template_of(t, r["text"]) for (t, _, _), r in zip(got, train + validation,
                                                                  strict=True)]
    assert reference.is_dir()


def test_parquet_without_the_datasets_library_names_the_extra(tmp_path, monkeypatch):
    where = ps_dataset(tmp_path, "toy_reviews", {})
    (where / "train.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import fails
    with pytest.raises(OptimlError, match=r"optiml-engine\[bench\]") as err:
        load_tasks(tmp_path, "promptsource", task_per="dataset")
    assert "train.parquet" in str(err.value)


def test_a_damaged_parquet_file_is_a_user_error(tmp_path):
    pytest.importorskip("datasets")
    where = ps_dataset(tmp_path, "toy_reviews", {})
    (where / "train.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(OptimlError, match="train.parquet: is not a readable parquet file"):
        load_tasks(tmp_path, "promptsource")
