"""Prompt rendering: per-benchmark layout, k-shot demonstrations never containing the query,
options listing, and left-truncation."""

import pytest

from optiml_engine.data.prompts import fit_to_length, render, render_choices
from optiml_engine.data.task import Instance, Task


def make_task(benchmark="superni", n=12, options=("no", "yes")):
    instances = [Instance(id=f"t-{i}", input=f"query number {i}", outputs=[options[i % 2]],
                          options=list(options)) for i in range(n)]
    return Task(name="toy", benchmark=benchmark, category="Toy", definition="Answer yes or no.",
                instances=instances, metric="accuracy")


def test_zero_shot_superni_layout():
    task = make_task()
    src, tgt = render(task, task.instances[3])
    assert src == ("Definition: Answer yes or no.\n\nInput: query number 3\nOptions:\n- no\n- yes"
                   "\nOutput:")
    assert tgt == " yes"


@pytest.mark.parametrize("shots", [1, 2, 5, 11, 20])
def test_k_shot_never_contains_the_query_and_is_deterministic(shots):
    task = make_task()
    for inst in task.instances:
        src, _ = render(task, inst, shots=shots, seed=7)
        assert src.count(f"Input: {inst.input}\n") == 1  # only as the final query
        assert src.endswith(f"Input: {inst.input}\nOptions:\n- no\n- yes\nOutput:")
        assert src.count("Input: ") == min(shots, len(task.instances) - 1) + 1
        assert render(task, inst, shots=shots, seed=7)[0] == src
    srcs = {render(task, task.instances[0], shots=2, seed=s)[0] for s in range(10)}
    assert len(srcs) > 1


def test_demonstrations_come_from_the_given_pool_and_skip_duplicate_inputs():
    task = make_task()
    pool = task.instances[:4] + [Instance(id="dup", input=task.instances[5].input, outputs=["no"])]
    src, _ = render(task, task.instances[5], shots=10, pool=pool)
    for demo in task.instances[:4]:
        assert f"Input: {demo.input}\n" in src
    assert src.count(f"Input: {task.instances[5].input}\n") == 1
    assert not any(f"query number {i}\n" in src for i in range(6, 12))


def test_templated_benchmarks_have_no_wrapper_and_options_only_when_absent():
    task = make_task("promptsource")
    task.instances[0].input = "Is it good? Options: no, yes"
    src, tgt = render(task, task.instances[0])
    assert src == "Is it good? Options: no, yes" and tgt == " no"
    src, _ = render(task, task.instances[1])
    assert src == "query number 1\nOptions:\n- no\n- yes"
    free = Task(name="gen", benchmark="flan", category="", definition="",
                instances=[Instance(id="a", input="Title?", outputs=["Rain"])])
    assert render(free, free.instances[0]) == ("Title?", " Rain")
    cot = Task(name="r", benchmark="reasoning", category="", definition="",
               instances=[Instance(id="a", input="2+2?", outputs=["2+2=4. So the answer is 4."])])
    assert render(cot, cot.instances[0])[0] == "Q: 2+2?\nA:"


def test_render_choices_matches_render_target():
    task = make_task()
    src, targets = render_choices(task, task.instances[2], shots=2, seed=1)
    assert targets == [" no", " yes"]
    assert (src, " no") == render(task, task.instances[2], shots=2, seed=1)


def test_fit_to_length_keeps_the_end_of_the_source_and_the_start_of_the_target():
    src, tgt = list(range(100)), list(range(1000, 1010))
    assert fit_to_length(src, tgt, 200) == (src, tgt)
    s, t = fit_to_length(src, tgt, 50)
    assert t == tgt and s == list(range(60, 100))
    s, t = fit_to_length(list(range(5)), list(range(1000, 1100)), 20, min_source=4)
    assert s == [1, 2, 3, 4] and t == list(range(1000, 1016))
