"""`prompts.list_options` (§5.4, Figure 1): the paper's training prompts list no answer options
(Super-NI's definition names them); the built bench says which it did, and evaluation renders
alike."""

import json
import random

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
    bench, sources = _build(tmp_path, prompts={"list_options": listed})
    assert len(sources) == 8  # 10 instances, 2 held out
    assert all(("Options:\n- no\n- yes\nOutput:" in s) == listed for s in sources)
    assert all(s.startswith("Definition: Answer yes or no.\n\nInput: is ") for s in sources)
    assert bench.manifest["prompts"]["list_options"] is listed
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
    assert cfg.prompts.style.list_options is False


def test_evaluation_prompts_use_the_training_delimiters(tmp_path):
    """A bench built with §2.4's random delimiters: each held-out instance's eval prompt ends with
    the delimiter drawn for it from the bench seed, the one training would use."""
    from optiml_engine.data.prompts import PAPER_DELIMITERS
    from optiml_engine.eval.harness import task_renderer

    _build(tmp_path, prompts={"delimiter": "random", "list_options": False})
    [et] = built_bench_suite(tmp_path / "out")
    render = task_renderer(et.task, PAPER)
    for inst in et.instances:
        drawn = random.Random(f"1:delimiter:{et.task.name}:{inst.id}").choice(PAPER_DELIMITERS)
        source, target = render(et.task, inst, 0, 1, et.demo_pool)
        assert source == f"Definition: Answer yes or no.\n\nInput: {inst.input}{drawn}"
        assert target == " " + inst.outputs[0]
