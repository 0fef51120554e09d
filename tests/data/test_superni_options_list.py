"""`superni_options_list` (§5.4): the paper's Super-NI training prompts list no answer options
(the definition names them); the built bench says which it did, and evaluation renders alike."""

import json

import pytest
import yaml

from optiml_engine.data.bench import build_bench
from optiml_engine.data.bench_store import BuiltBench
from optiml_engine.data.tokenizer import ByteTokenizer
from optiml_engine.eval.protocol import PAPER
from optiml_engine.eval.suite import built_bench_suite


def _build(tmp_path, **cfg):
    (tmp_path / "ni" / "tasks").mkdir(parents=True)
    task = {"Definition": ["Answer yes or no."], "Categories": ["Answer Verification"],
            "Source": ["toyyn"], "Instances": [{"id": f"yn-{k}", "input": f"is {k} even",
                                               "output": ["yes" if k % 2 == 0 else "no"]}
                                              for k in range(10)]}
    (tmp_path / "ni" / "tasks" / "task9001_toy_yes_no.json").write_text(json.dumps(task))
    config = {"name": "opts", "seed": 1, "tokenizer": "byte", "max_example_tokens": 600,
              "sources": [{"name": "superni", "format": "superni", "path": "ni"}],
              "held_out": {"instances": 2}, **cfg}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    build_bench(tmp_path / "bench.yaml", tmp_path / "out", force=True)
    bench = BuiltBench(tmp_path / "out")
    sources = [ByteTokenizer().decode(bench.example(row)[0]) for row in range(len(bench.index))]
    return bench, sources


@pytest.mark.parametrize("listed", [False, True])
def test_superni_training_prompts_list_options_only_when_asked(tmp_path, listed):
    bench, sources = _build(tmp_path, superni_options_list=listed)
    assert len(sources) == 8  # 10 instances, 2 held out
    assert all(("Options:\n- no\n- yes\nOutput:" in s) == listed for s in sources)
    assert all(s.startswith("Definition: Answer yes or no.\n\nInput: is ") for s in sources)
    assert bench.manifest["superni_options_list"] is listed
    [et] = built_bench_suite(tmp_path / "out")
    assert PAPER.lists_options(et.task) is listed  # evaluation prompts as the training ones


def test_the_default_keeps_the_earlier_prompts(tmp_path):
    _, sources = _build(tmp_path)
    assert all("Options:\n- no\n- yes\nOutput:" in s for s in sources)


def test_the_opt_iml_bench_recipe_lists_none(monkeypatch):
    from pathlib import Path

    from optiml_engine.data.bench_config import load_bench_config

    monkeypatch.setenv("OPTIML_DATA", "/nowhere")
    monkeypatch.setenv("OPT_TOKENIZER", "byte")
    cfg = load_bench_config(Path(__file__).parents[2] / "recipes/bench/opt-iml.yaml")
    assert cfg.superni_options_list is False
