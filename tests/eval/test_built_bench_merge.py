"""On a built bench, one dataset in Super-NI and PromptSource under another name (a dedup alias)
is one task of the evaluation (§4.1: "If the same task exists across multiple benchmarks, we
then average performance across benchmarks as well")."""

import yaml

from optiml_engine.data.bench import build_bench
from optiml_engine.data.tokenizer import ByteTokenizer
from optiml_engine.eval import harness
from optiml_engine.eval.aggregate import aggregate
from optiml_engine.eval.harness import EvalSettings, run_eval
from optiml_engine.eval.protocol import EvalProtocol
from optiml_engine.eval.suite import built_bench_suite
from tests.data.test_bench_paper_rules import promptsource_dataset, sentence, superni_task


def test_a_dataset_in_two_benchmarks_is_one_evaluation_task(tmp_path, tiny_models,
                                                             monkeypatch):
    superni_task(tmp_path / "ni", "task9101_toyqa_answer", "Question Answering", "ToyQA",
                 [sentence(i) for i in range(3)], ["yes"] * 3)
    promptsource_dataset(tmp_path / "ps", "glue", "toyqa",
                         [{"text": sentence(i, salt="p"), "answer": "no"} for i in range(3)])
    config = {"name": "merge", "seed": 1, "tokenizer": "byte", "max_example_tokens": 600,
              "sources": [{"name": "superni", "format": "superni", "path": "ni"},
                          {"name": "promptsource", "format": "promptsource", "path": "ps"}],
              "categories": {"glue/toyqa": "Question Answering"},
              "dedup": {"policy": "paper", "aliases": {"glue/toyqa": "toyqa"}},
              "held_out": {"categories": ["Question Answering"], "instances": 0}}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    build_bench(tmp_path / "bench.yaml", tmp_path / "out", force=True)
    suite = built_bench_suite(tmp_path / "out")
    assert sorted((et.task.benchmark, et.task.meta["dataset_key"]) for et in suite) == [
        ("promptsource", "toyqa"), ("superni", "toyqa")]

    # every prompt "generates" yes: Super-NI 100 (ROUGE-L), PromptSource 0 (exact match "no")
    monkeypatch.setattr(harness, "greedy_generate",
                        lambda model, prompts, *a, **k: [ByteTokenizer().encode("yes")
                                                         for _ in prompts])
    records = run_eval(tiny_models[0], ByteTokenizer(), suite,
                       EvalSettings(shots=(0,), max_new_tokens=2,
                                    protocol=EvalProtocol(benchmark_shots={})),
                       tmp_path / "eval", show_progress=False)
    summary = aggregate(records)[0]
    assert summary["unit"] == {"toyqa (promptsource+superni)": {
        "exact_match": 50.0, "rougeL": 50.0, "score": 50.0}}
    assert summary["count"]["all | heldout_category"] == 1
