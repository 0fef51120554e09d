"""OPT-IML's training prompts (§2.2, §2.4, Table 6), each behind a `prompts` key of the bench YAML:
a per-example output delimiter drawn from the paper's eight, the reasoning instruction and
"The answer is X" targets, one instruction sentence per CrossFit / ExMix / T5 task."""

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from optiml_engine.data.bench import build_bench
from optiml_engine.data.bench_config import load_bench_config
from optiml_engine.data.bench_store import BuiltBench
from optiml_engine.data.prompt_config import apply_instructions, parse_prompts
from optiml_engine.data.prompts import PromptStyle, render
from optiml_engine.data.sources import load_tasks
from optiml_engine.data.task import Instance, Task
from optiml_engine.errors import OptimlError

# footnote 5, copied from the paper by hand (its "\output:" read as "\noutput:")
FOOTNOTE_5 = ["\nAnswer:", " Answer:", "\nA:", " A:", "\nOutput:", " Output:", "\nanswer:",
              "\noutput:"]
STEP_BY_STEP = "Answer the following question by reasoning step by step."
RANDOM = PromptStyle(delimiter="random")


def task(benchmark: str, n: int = 200, definition: str = "Do it.") -> Task:
    return Task(name=f"{benchmark}_toy", benchmark=benchmark, category="Toy",
                definition=definition, instances=[Instance(id=f"i{k}", input=f"query {k}",
                                                           outputs=[f"out {k}"])
                                                  for k in range(n)])


def delimiter_of(source: str, before: str) -> str:
    assert source.startswith(before), source
    return source[len(before):]


def test_each_example_ends_with_one_of_the_papers_delimiters_drawn_from_the_seed():
    t = task("superni")
    drawn = []
    for inst in t.instances:
        src, tgt = render(t, inst, seed=3, style=RANDOM)
        drawn.append(delimiter_of(src, f"Definition: Do it.\n\nInput: {inst.input}"))
        assert tgt == f" {inst.outputs[0]}"
    assert set(drawn) == set(FOOTNOTE_5)  # all eight in 200 draws
    assert max(Counter(drawn).values()) < 50  # none dominates (25 expected each)
    again = [render(t, inst, seed=3, style=RANDOM)[0] for inst in t.instances]
    other = [render(t, inst, seed=4, style=RANDOM)[0] for inst in t.instances]
    assert again == [render(t, i, seed=3, style=RANDOM)[0] for i in t.instances]
    assert sum(a != b for a, b in zip(again, other, strict=True)) > 100


def test_templated_benchmarks_get_the_delimiter_after_the_template_and_demos_share_it():
    t = task("promptsource", definition="")
    src, _ = render(t, t.instances[0], seed=1, style=RANDOM)
    delimiter = delimiter_of(src, "query 0")
    assert delimiter in FOOTNOTE_5
    src, _ = render(t, t.instances[0], shots=2, seed=1, style=RANDOM)
    blocks = src.split("\n\n")
    assert len(blocks) == 3 and blocks[-1] == f"query 0{delimiter}"
    for block in blocks[:2]:  # each demonstration: its input, the same delimiter, its output
        k = block.split()[1].split("\n")[0]
        assert block == f"query {k}{delimiter} out {k}"


def test_fixed_delimiter_keeps_the_earlier_layout():
    t = task("superni")
    assert render(t, t.instances[0]) == ("Definition: Do it.\n\nInput: query 0\nOutput:",
                                         " out 0")
    cot = task("reasoning", definition="")
    assert render(cot, cot.instances[0])[0] == "Q: query 0\nA:"


def test_reasoning_prompt_and_target_follow_table_6(tmp_path):
    (tmp_path / "cot.jsonl").write_text(json.dumps(
        {"question": "How do most people feel about a person they love?",
         "rationale": "we care about people we love.", "answer": "care about"}) + "\n")
    (t,) = load_tasks(tmp_path / "cot.jsonl", "cot",
                      cot_target="{rationale} The answer is {answer}")
    style = PromptStyle(delimiter="random", reasoning_instruction=STEP_BY_STEP)
    src, tgt = render(t, t.instances[0], seed=0, style=style)
    question = "How do most people feel about a person they love?"
    assert delimiter_of(src, f"{STEP_BY_STEP}\n{question}") in FOOTNOTE_5
    assert tgt == " we care about people we love. The answer is care about"
    few = task("reasoning", n=6, definition="")  # k-shot: the instruction once, at the top
    src, _ = render(few, few.instances[0], shots=2, seed=0, style=style)
    assert src.startswith(f"{STEP_BY_STEP}\nquery ") and src.count(STEP_BY_STEP) == 1
    assert src.count("\n\n") == 2
    (old,) = load_tasks(tmp_path / "cot.jsonl", "cot")  # the code default stays reachable
    assert old.instances[0].outputs == ["we care about people we love. So the answer is "
                                        "care about."]


def test_crossfit_exmix_t5_tasks_get_their_instruction_sentence_at_the_instance_level():
    cfg = parse_prompts({"delimiter": "random", "instance_instructions": ["crossfit", "exmix"],
                         "instructions": {"exmix_toy": "Is the following text produced by GPT-2?",
                                          "toydata": "Which emotion is shown?",
                                          "not_in_bench": "Unused."}}, "b.yaml: prompts")
    exmix, crossfit, superni = task("exmix", definition=""), task("crossfit", definition=""), \
        task("superni")
    crossfit.dataset = "toydata"  # found by dataset when the task name is not in the table
    notes = apply_instructions([exmix, crossfit, superni], cfg, "b.yaml")
    assert notes == ["prompts: 1 instruction(s) match no task of this bench: not_in_bench"]
    assert (exmix.definition, crossfit.definition) == ("Is the following text produced by "
                                                       "GPT-2?", "Which emotion is shown?")
    src, _ = render(exmix, exmix.instances[0], seed=0, style=cfg.style)
    assert delimiter_of(src, "Is the following text produced by GPT-2?\nquery 0") in FOOTNOTE_5
    assert "Definition:" not in src
    src, _ = render(superni, superni.instances[0], seed=0, style=cfg.style)  # dataset level
    assert src.startswith("Definition: Do it.\n\nInput: query 0")


def test_a_task_without_its_instruction_sentence_is_an_error_or_a_note():
    strict = parse_prompts({"instance_instructions": ["t5"]}, "b.yaml: prompts")
    with pytest.raises(OptimlError, match="no instruction sentence for task.* t5_toy"):
        apply_instructions([task("t5", definition="")], strict, "b.yaml")
    lenient = parse_prompts({"instance_instructions": ["t5"], "missing_instruction": "none"},
                            "b.yaml: prompts")
    t = task("t5", definition="")
    assert apply_instructions([t], lenient, "b.yaml") == ["prompts: no instruction sentence for "
                                                         "t5_toy"]
    assert render(t, t.instances[0]) == ("Input: query 0\nOutput:", " out 0")
    own = task("t5", definition="A record's own definition.")  # counts as its sentence
    assert apply_instructions([own], strict, "b.yaml") == []


@pytest.mark.parametrize("raw, match", [
    ({"delimiter": "sometimes"}, "delimiter"),
    ({"delimiters": [" A:"]}, "only with delimiter: random"),
    ({"reasoning_target": "{rationale} then"}, "reasoning_target"),
    ({"instructions": {"emo": "Which emotion?"}}, "instance_instructions"),
    ({"missing_instruction": "skip"}, "missing_instruction"),
    ({"delimitter": "random"}, "unknown key"),
])
def test_prompt_keys_are_checked(raw, match):
    with pytest.raises(OptimlError, match=match):
        parse_prompts(raw, "b.yaml: prompts")


def test_pretraining_text_has_no_source():
    t = task("pretraining", definition="")
    assert render(t, t.instances[0], style=RANDOM) == ("", " out 0")
    assert render(t, t.instances[0]) == ("", " out 0")


def test_the_built_bench_trains_on_these_prompts_and_records_the_style(tmp_path):
    (tmp_path / "cf").mkdir()
    (tmp_path / "cf/emo.jsonl").write_text("".join(json.dumps(
        {"src": f"row {k}", "tgt": f"t{k}", "category": "Sentiment Analysis"}) + "\n"
        for k in range(40)))
    config = {"name": "p", "seed": 2, "tokenizer": "byte", "held_out": {"instances": 0},
              "sources": [{"name": "crossfit", "format": "seq2seq", "path": "cf"}],
              "prompts": {"delimiter": "random", "instance_instructions": ["crossfit"],
                          "instructions": {"emo": "Which emotion is shown?"}}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    assert load_bench_config(tmp_path / "b.yaml").prompts.style.delimiter == "random"
    manifest = build_bench(tmp_path / "b.yaml", tmp_path / "out")
    assert manifest["prompts"]["delimiters"] == FOOTNOTE_5
    assert PromptStyle.from_dict(manifest["prompts"]) == parse_prompts(
        config["prompts"], "").style
    bench = BuiltBench(Path(tmp_path / "out"))
    seen = Counter()
    for row in range(manifest["counts"]["train_examples"]):
        src, tgt = bench.example(row)
        text = bytes(int(i) - 4 for i in src).decode()  # the byte tokenizer: byte + 4
        k = int(bytes(int(i) - 4 for i in tgt).decode()[2:])
        seen[delimiter_of(text, f"Which emotion is shown?\nrow {k}")] += 1
    assert sum(seen.values()) == 40 and set(seen) <= set(FOOTNOTE_5) and len(seen) >= 6


def test_options_list_is_a_key_and_off_in_the_papers_bench():
    t = task("superni", n=2)
    for inst in t.instances:
        inst.options = ["out 0", "out 1"]
    listed, _ = render(t, t.instances[0])
    assert listed.endswith("Input: query 0\nOptions:\n- out 0\n- out 1\nOutput:")
    style = parse_prompts({"list_options": False}, "b.yaml: prompts").style
    assert render(t, t.instances[0], style=style)[0] == ("Definition: Do it.\n\nInput: query 0"
                                                         "\nOutput:")
    recipe = yaml.safe_load((Path(__file__).parents[2] / "recipes/bench/opt-iml.yaml").read_text())
    assert parse_prompts(recipe["prompts"], "opt-iml.yaml").style.list_options is False
    with pytest.raises(OptimlError, match="list_options"):
        parse_prompts({"list_options": "no"}, "b.yaml: prompts")


def test_a_dropped_duplicate_needs_no_instruction_sentence(tmp_path):
    """§2.1 drops the CrossFit copy of a dataset seen elsewhere before instructions are looked
    up, so the build does not ask for a sentence of a task it does not keep."""
    for bench, rows in (("ps_like", "a"), ("cf", "b")):
        (tmp_path / bench).mkdir()
        (tmp_path / bench / "toyqa.jsonl").write_text("".join(json.dumps(
            {"src": f"{rows} {k}", "tgt": "x", "category": "Question Answering"}) + "\n"
            for k in range(3)))
    config = {"name": "p", "tokenizer": "byte", "held_out": {"instances": 0},
              "sources": [{"name": "unifiedskg", "format": "seq2seq", "path": "ps_like"},
                          {"name": "crossfit", "format": "seq2seq", "path": "cf"}],
              "dedup": {"policy": "paper"}, "prompts": {"instance_instructions": ["crossfit"]}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    manifest = build_bench(tmp_path / "b.yaml", tmp_path / "out")
    assert [t["name"] for t in manifest["tasks"]] == ["unifiedskg_toyqa"]
