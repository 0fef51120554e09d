"""Task readers on hand-written fixtures in each format, and their refusals of bad input."""

import json
from pathlib import Path

import pytest

from optiml_engine.data.sources import load_tasks
from optiml_engine.data.sources.sandbox import TemplateRefused, render_jinja, render_pattern
from optiml_engine.errors import OptimlError

FIX = Path(__file__).parent / "fixtures"


def test_superni_schema_nan_quirk_and_splits():
    tasks = {t.name: t for t in load_tasks(FIX / "superni", "superni")}
    weather = tasks["task9001_fixture_weather_label"]
    assert weather.category == "Sentiment Analysis" and weather.benchmark == "superni"
    assert weather.definition == 'Label the weather report "sunny" or "rainy".'
    assert weather.meta["nan_dropped"] == 1 and weather.meta["URL"] == []
    assert weather.meta["Domains"] == ["Weather -> Reports"]
    assert weather.metric == "accuracy" and weather.instances[0].options == ["rainy", "sunny"]
    assert weather.positive_examples[0].output == "sunny"
    assert weather.negative_examples[0].explanation == "Showers are rain."
    assert weather.meta["split"] == "train" and weather.dataset == "weather_toy"
    capital = tasks["task9002_fixture_capital_answer"]
    assert capital.definition == "Answer with the capital city of the country."  # plain string
    assert capital.instances[0].outputs == ["Rome", "Roma"]
    assert capital.instances[1].outputs == ["Madrid"]  # a bare string output is wrapped
    assert capital.metric == "rouge_l" and capital.instances[0].options is None
    assert capital.meta["split"] == "test" and capital.meta["Reasoning"] == ["Factual Reasoning"]
    only_test = load_tasks(FIX / "superni", "superni", split="test")
    assert [t.name for t in only_test] == ["task9002_fixture_capital_answer"]


def test_superni_bad_instance_names_file_and_record(tmp_path):
    obj = json.loads((FIX / "superni/tasks/task9002_fixture_capital_answer.json").read_text())
    del obj["Instances"][2]["input"]
    (tmp_path / "task1_bad.json").write_text(json.dumps(obj))
    with pytest.raises(OptimlError, match=r"task1_bad.json: Instances\[2\]: field 'input'"):
        load_tasks(tmp_path, "superni")
    (tmp_path / "task1_bad.json").write_text("{not json")
    with pytest.raises(OptimlError, match="task1_bad.json:1: invalid JSON"):
        load_tasks(tmp_path, "superni")


def test_promptsource_templates_render_and_skip_empty():
    tasks = {t.name: t for t in load_tasks(FIX / "promptsource", "promptsource")}
    assert set(tasks) == {"toy_reviews_polarity_question", "toy_reviews_write_positive"}
    pol = tasks["toy_reviews_polarity_question"]
    assert pol.metric == "accuracy" and pol.benchmark == "promptsource"
    assert pol.instances[1].input == ("Review: Broke after a day.\n"
                                      "Is this review positive or negative?")
    assert pol.instances[1].outputs == ["negative"]
    assert pol.instances[1].options == ["negative", "positive"]
    gen = tasks["toy_reviews_write_positive"]
    assert gen.metric == "rouge_l" and gen.meta["skipped_empty"] == 1
    assert [i.input for i in gen.instances] == ["Write a glowing review of KETTLE.",
                                                "Write a glowing review of LAMP."]
    assert gen.instances[1].outputs == ["Exactly as described."]


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }} ||| x",
    "{{ text.__class__ }} ||| x",
    "{{ cycler }} ||| x",
    "{{ config }} ||| x",
    "{{ text.upper.__self__ }} ||| x",
])
def test_sandbox_refuses_reaching_outside_the_record(template):
    with pytest.raises(TemplateRefused):
        render_jinja(template, {"text": "hi", "label": 0})


def test_sandbox_allows_plain_data_methods():
    out = render_jinja("{{ text.upper() }} {{ words | join('-') }} {{ d['k'] }}",
                       {"text": "hi", "words": ["a", "b"], "d": {"k": 3}})
    assert out == "HI a-b 3"
    with pytest.raises(TemplateRefused):
        render_pattern("{0.__class__}", {"a": 1})
    with pytest.raises(TemplateRefused):
        render_pattern("{a.__class__}", {"a": 1})


def test_promptsource_missing_field_names_the_record(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    (d / "templates.yaml").write_text((FIX / "promptsource/toy_reviews/templates.yaml").read_text())
    (d / "train.jsonl").write_text('{"text": "ok", "label": 1, "product": "x"}\n{"label": 0}\n')
    with pytest.raises(OptimlError, match=r"train.jsonl:2.*lacks"):
        load_tasks(tmp_path, "promptsource")


def test_flan_patterns_options_and_determinism():
    tasks = {t.name: t for t in load_tasks(FIX / "flan", "flan", seed=1)}
    nli, titles = tasks["flan_toy_nli"], tasks["flan_toy_titles"]
    assert nli.metric == "accuracy" and titles.metric == "rouge_l"
    assert len(nli.instances) == 3 and len(titles.instances) == 2
    for inst, premise in zip(nli.instances, ["A dog runs", "The shop", "She reads"], strict=True):
        assert premise in inst.input and inst.input.endswith("OPTIONS:\n- yes\n- no")
        assert inst.options == ["yes", "no"]
    assert [i.outputs for i in nli.instances] == [["yes"], ["no"], ["yes"]]
    assert titles.instances[1].outputs == ["New library opens"]
    again = load_tasks(FIX / "flan", "flan", seed=1)
    assert [i.input for i in again[0].instances] == [i.input for i in nli.instances]
    patterns = {tuple(i.input.startswith("Premise:") for i in t[0].instances)
                for t in (load_tasks(FIX / "flan", "flan", seed=s) for s in range(8))}
    assert len(patterns) > 1  # the seed picks among the dataset's patterns


def test_seq2seq_groups_tasks_and_reads_unifiedskg_layout():
    tasks = {t.name: t for t in load_tasks(FIX / "seq2seq", "seq2seq", benchmark="crossfit")}
    prime = tasks["crossfit_prime_check"]
    assert prime.metric == "accuracy" and prime.category == "Mathematics"
    assert [i.outputs for i in prime.instances] == [["yes"], ["no"]]
    tr = tasks["crossfit_toy_translate"]
    assert tr.instances[0].outputs == ["chat", "le chat"] and tr.instances[0].id == "tr-1"
    skg = tasks["crossfit_unifiedskg_toy"].instances
    assert skg[0].input == ("task: wiki table question ; which city is larger? ; structured "
                            "knowledge: col : city | population row 1 : Oslo | 700000 row 2 : "
                            "Bergen | 290000")
    assert skg[1].input.startswith("structured knowledge: col")


def test_cot_and_dialogue():
    (cot,) = load_tasks(FIX / "cot", "cot")
    assert cot.benchmark == "reasoning" and cot.name == "reasoning_toy_math"
    assert cot.instances[0].outputs == ["Tom starts with 3 and adds 2, and 3 + 2 = 5. "
                                        "So the answer is 5."]
    assert cot.metric == "rouge_l"
    (chat,) = load_tasks(FIX / "dialogue", "dialogue")
    assert len(chat.instances) == 3
    assert chat.instances[1].input == ("User: Hi, can you help me?\nBot: Of course. What do you "
                                       "need?\nUser:")
    assert chat.instances[1].outputs == ["A recipe for tea."]
    assert chat.instances[2].input == "User: Hello\nAssistant:"


def test_unknown_format_and_missing_path():
    with pytest.raises(OptimlError, match="unknown task format"):
        load_tasks(FIX / "cot", "csv")
    with pytest.raises(OptimlError, match="no such file"):
        load_tasks(FIX / "nowhere", "seq2seq")
