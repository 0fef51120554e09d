"""The paper's evaluation protocol (§4.1, §5.2-5.4): averaging, shots and Super-NI scoring,
against hand-computed values."""

import pytest

from optiml_engine.data.task import Instance, Task
from optiml_engine.data.tokenizer import ByteTokenizer
from optiml_engine.errors import OptimlError
from optiml_engine.eval import harness
from optiml_engine.eval.aggregate import aggregate, selection_scores
from optiml_engine.eval.harness import EvalSettings, build_parser, evaluate_task, run_eval
from optiml_engine.eval.protocol import ENGINE, PAPER, EvalProtocol, protocol_from_args
from optiml_engine.eval.suite import EvalTask


def rec(task, category, level, value, shots=0, benchmark="superni", dataset="", group=None):
    return {"task": task, "category": category, "benchmark": benchmark, "level": level,
            "shots": shots, "dataset": dataset, "task_group": group,
            "scores": {"score": value}}


def test_category_is_the_mean_of_its_task_means_and_a_level_of_its_categories():
    records = [rec("t1", "QA", "L2", 100.0), rec("t1", "QA", "L2", 0.0),
               rec("t1", "QA", "L2", 50.0), rec("t2", "QA", "L2", 20.0),
               rec("t3", "Toxic", "L2", 10.0)]
    s = aggregate(records)[0]
    # t1 = 50, t2 = 20: QA = 35 (pooling the 4 instances would say 42.5)
    assert s["level_category"]["L2 | QA"]["score"] == pytest.approx(35.0)
    assert s["category"]["QA"]["score"] == pytest.approx(35.0)
    # level = (QA 35 + Toxic 10) / 2 (the mean of the three tasks would be 26.67)
    assert s["level"]["L2"]["score"] == pytest.approx(22.5)
    old = aggregate(records, ENGINE)[0]
    assert old["category"]["QA"]["score"] == pytest.approx(42.5)
    assert old["level"]["L2"]["score"] == pytest.approx(80.0 / 3)


def test_promptsource_templates_and_mmlu_subjects_are_one_task_each():
    records = [  # two templates of one PromptSource dataset: 75 and 0
        *(rec("ps_anli_t1", "TE", "L1", v, benchmark="promptsource", dataset="anli")
          for v in (100.0, 100.0, 100.0, 0.0)),
        rec("ps_anli_t2", "TE", "L1", 0.0, benchmark="promptsource", dataset="anli"),
        # two MMLU subjects: 100 and 0
        rec("mmlu_a", "MMLU", "L2", 100.0, benchmark="mmlu", dataset="mmlu", group="mmlu"),
        *(rec("mmlu_b", "MMLU", "L2", 0.0, benchmark="mmlu", dataset="mmlu", group="mmlu")
          for _ in range(3))]
    s = aggregate(records)[0]
    assert s["unit"] == {"promptsource/anli": {"score": 37.5}, "mmlu": {"score": 50.0}}
    assert s["level_category"]["L1 | TE"]["score"] == pytest.approx(37.5)  # not 60 (pooled)
    assert s["count"] == {"mmlu | L2": 1, "promptsource | L1": 1, "all | L1": 1, "all | L2": 1}
    assert s["benchmark"]["mmlu"]["score"] == pytest.approx(50.0)
    ungrouped = aggregate(records, EvalProtocol(group_tasks=False))[0]
    assert ungrouped["count"] == {"mmlu | L2": 2, "promptsource | L1": 2, "all | L1": 2,
                                  "all | L2": 2}


def test_the_same_dataset_in_several_benchmarks_is_merged():
    records = [rec("task1_wino", "Coref", "L1", 80.0, dataset="winogrande"),
               rec("ps_wino_t1", "Coref", "L1", 40.0, benchmark="promptsource",
                   dataset="winogrande"),
               rec("ps_wino_t2", "Coref", "L1", 60.0, benchmark="promptsource",
                   dataset="winogrande"),
               rec("task2_wsc", "Coref", "L1", 20.0, dataset="wsc")]
    s = aggregate(records)[0]
    # Super-NI 80, PromptSource (40 + 60) / 2 = 50: one task of (80 + 50) / 2 = 65
    assert s["unit"]["winogrande (promptsource+superni)"]["score"] == pytest.approx(65.0)
    assert s["level_category"]["L1 | Coref"]["score"] == pytest.approx((65.0 + 20.0) / 2)
    assert s["count"]["all | L1"] == 2 and s["count"]["superni | L1"] == 2
    apart = aggregate(records, EvalProtocol(merge_benchmarks=False))[0]
    assert apart["level_category"]["L1 | Coref"]["score"] == pytest.approx((80 + 50 + 20) / 3)


def test_selection_score_averages_categories_over_0_and_5_shots():
    records = [rec("a", "QA", "L2", 40.0), rec("a", "QA", "L2", 60.0, shots=5),
               rec("s", "Summarization", "L2", 10.0), rec("a", "QA", "L2", 99.0, shots=2)]
    # QA 0-shot 40, QA 5-shot 60, Summarization 0-shot only 10: (40 + 60 + 10) / 3
    assert selection_scores(aggregate(records)) == {"L2": pytest.approx(110.0 / 3)}


def test_shots_per_benchmark_and_summarization_zero_shot_only():
    shots = (0, 5)
    assert PAPER.shots_for("superni", "Textual Entailment", shots) == (0, 2, 5)
    assert PAPER.shots_for("bbh", "BIG-Bench Hard", shots) == (3,)
    assert PAPER.shots_for("flan", "Question Answering", shots) == (0, 5)
    assert PAPER.shots_for("superni", "Summarization", shots) == (0,)
    assert PAPER.shots_for("promptsource", "Summarization", shots) == (0,)
    assert ENGINE.shots_for("superni", "Summarization", shots) == (0, 5)
    assert EvalSettings().shots == (0, 5) and EvalSettings().max_instances == 250


def test_cli_flags_set_the_protocol():
    def proto(*flags):
        args = build_parser().parse_args(["--checkpoint", "c", "--bench", "b", "--out", "o",
                                          *flags])
        args.shots_given = args.shots is not None
        return protocol_from_args(args)

    assert proto() == PAPER
    assert proto("--shots", "0").benchmark_shots == {}  # explicit shots: for every task
    assert proto("--shots", "0", "--benchmark-shots", "bbh=3").benchmark_shots == {"bbh": (3,)}
    assert proto("--protocol", "engine") == ENGINE
    got = proto("--superni-scoring", "rank", "--zero-shot-categories", "none",
                "--category-score", "instances", "--merge-benchmarks", "off")
    assert (got.superni_scoring, got.zero_shot_categories, got.category_score,
            got.merge_benchmarks, got.group_tasks) == ("rank", (), "instances", False, True)
    with pytest.raises(OptimlError, match="benchmark-shots"):
        proto("--benchmark-shots", "superni=two")


def _lcs_rouge_l(pred: list[str], ref: list[str]) -> float:
    """ROUGE-L F1 from the longest common subsequence, computed here by hand."""
    table = [[0] * (len(ref) + 1) for _ in range(len(pred) + 1)]
    for i, p in enumerate(pred):
        for j, r in enumerate(ref):
            table[i + 1][j + 1] = table[i][j] + 1 if p == r else max(table[i][j + 1],
                                                                     table[i + 1][j])
    lcs = table[-1][-1]
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 100 * 2 * precision * recall / (precision + recall)


@pytest.fixture
def fixed_generation(monkeypatch):
    """greedy_generate replaced: every prompt 'generates' `text`; the prompts are kept."""
    seen = {"prompts": [], "text": ""}

    def fake(model, prompts, budget, eos_id, pad_id, vocab_limit=None):
        seen["prompts"] += prompts
        return [ByteTokenizer().encode(seen["text"]) for _ in prompts]

    monkeypatch.setattr(harness, "greedy_generate", fake)
    return seen


def test_superni_label_task_is_scored_by_rouge_l_without_an_options_list(
        tiny_models, fixed_generation):
    insts = [Instance(f"i{k}", f"q{k}", ["the cat is on the mat"],
                      ["the cat is on the mat", "no"]) for k in range(2)]
    # declared exact match: under §5.4 a Super-NI task is still scored by ROUGE-L
    task = Task("task9_cls", "superni", "Textual Entailment", "Pick one.", insts,
                metric="exact_match")
    fixed_generation["text"] = "the cat sat on a mat"
    recs = evaluate_task(tiny_models[0], ByteTokenizer(), EvalTask(task, "L1", insts), 0,
                         EvalSettings(max_new_tokens=4))
    # LCS (the, cat, on, mat) = 4 of 6 and 6 tokens: F1 = 2/3
    want = _lcs_rouge_l("the cat sat on a mat".split(), "the cat is on the mat".split())
    assert want == pytest.approx(200.0 / 3)
    assert [r["kind"] for r in recs] == ["generate", "generate"]
    assert [r["scores"]["score"] for r in recs] == pytest.approx([want, want])
    prompts = [ByteTokenizer().decode(p) for p in fixed_generation["prompts"]]
    assert all(p.endswith("Input: q0\nOutput:") or p.endswith("Input: q1\nOutput:")
               for p in prompts) and not any("Options:" in p for p in prompts)
    # the engine's rules: rank classification, options listed
    ranked = evaluate_task(tiny_models[0], ByteTokenizer(), EvalTask(task, "L1", insts), 0,
                           EvalSettings(max_new_tokens=4, protocol=ENGINE))
    assert [r["kind"] for r in ranked] == ["rank", "rank"]


def test_run_eval_runs_summarization_zero_shot_and_superni_at_two_shots(
        tiny_models, fixed_generation, tmp_path):
    def task(name, category):
        return Task(name, "superni", category, "Do it.",
                    [Instance(f"{name}-{k}", f"x{k}", ["y"]) for k in range(4)])

    summ, qa = task("task1_sum", "Summarization"), task("task2_qa", "Question Answering")
    suite = [EvalTask(summ, "heldout_task", summ.instances),
             EvalTask(qa, "heldout_task", qa.instances)]
    fixed_generation["text"] = "y"
    records = run_eval(tiny_models[0], ByteTokenizer(), suite, EvalSettings(max_new_tokens=2),
                       tmp_path, show_progress=False)
    pairs = sorted({(r["task"], r["shots"]) for r in records})
    assert pairs == [("task1_sum", 0), ("task2_qa", 0), ("task2_qa", 2), ("task2_qa", 5)]
    assert sorted(p.name for p in (tmp_path / "tasks" / "heldout_task").iterdir()) == [
        "task1_sum__0shot.json", "task2_qa__0shot.json", "task2_qa__2shot.json",
        "task2_qa__5shot.json"]
