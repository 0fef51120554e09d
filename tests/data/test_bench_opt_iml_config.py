"""The real OPT-IML Bench config builds once pointed at local collections: a miniature layout
with one dataset per benchmark, named as the config's tables expect."""

import json
import shutil
from pathlib import Path

import yaml

from optiml_engine.data.bench import build_bench
from optiml_engine.data.bench_config import load_bench_config

ROOT = Path(__file__).parents[2]
FIX = Path(__file__).parent / "fixtures"


def jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_layout(root: Path) -> None:
    shutil.copytree(FIX / "superni", root / "natural-instructions")
    imdb = root / "promptsource" / "imdb"
    imdb.mkdir(parents=True)
    templates = yaml.safe_load((FIX / "promptsource/toy_reviews/templates.yaml").read_text()
                               .replace("!TemplateMetadata", "").replace("!Template", ""))
    templates["dataset"] = "imdb"
    (imdb / "templates.yaml").write_text(yaml.safe_dump(templates))
    shutil.copy(FIX / "promptsource/toy_reviews/train.jsonl", imdb / "train.jsonl")
    (root / "flan").mkdir()
    (root / "flan/templates.json").write_text(json.dumps(
        {"rte": [["{premise}\nDoes this imply \"{hypothesis}\"?\n{options_}", "{answer}"]]}))
    shutil.copy(FIX / "flan/toy_nli.jsonl", root / "flan/rte.jsonl")
    # named as in the config's instruction table (§2.2: one sentence per task of these three)
    for bench, task in (("crossfit", "emo"), ("exmix", "gpt2_deepfake_detection"),
                        ("t5", "c4_span_corruption")):
        jsonl(root / bench / f"{task}.jsonl", [
            {"src": f"{bench} question {i}?", "tgt": str(i), "category": "Question Answering"}
            for i in range(6)])
    (root / "unifiedskg").mkdir()
    shutil.copy(FIX / "seq2seq/unifiedskg_toy.jsonl", root / "unifiedskg" / "wikitq.jsonl")
    shutil.copytree(FIX / "cot", root / "reasoning")
    shutil.copytree(FIX / "dialogue", root / "dialogue")


def test_opt_iml_config_builds_on_a_miniature_layout(tmp_path, monkeypatch):
    make_layout(tmp_path / "data")
    monkeypatch.setenv("OPTIML_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("OPT_TOKENIZER", "byte")
    cfg = load_bench_config(ROOT / "recipes/bench/opt-iml.yaml")
    assert {s.name for s in cfg.sources} >= {"superni", "promptsource", "flan", "crossfit",
                                             "exmix", "t5", "unifiedskg", "reasoning"}
    assert next(s.cap for s in cfg.sources if s.name == "flan") == 30000
    assert cfg.default_cap == 100000
    manifest = build_bench(ROOT / "recipes/bench/opt-iml.yaml", tmp_path / "out")
    tasks = {t["name"]: t for t in manifest["tasks"]}
    assert tasks["flan_rte"]["split"] == "heldout_category"  # Textual Entailment
    assert tasks["task9002_fixture_capital_answer"]["split"] == "heldout_task"  # official test
    # PromptSource: the dataset's templates merged into one task (Table 1, §4.1)
    assert tasks["imdb"]["category"] == "Sentiment Analysis"
    assert not any(name.startswith("imdb_") for name in tasks)
    assert tasks["unifiedskg_wikitq"]["category"] == "Question Answering"
    assert set(manifest["benchmarks"]) == {"superni", "promptsource", "flan", "crossfit", "exmix",
                                           "t5", "unifiedskg", "reasoning", "dialogue"}
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert any("optional source pretraining" in s["reason"] for s in report["skipped"])
