"""The ablation demos' synthetic bench (data/synthetic_mix.py): instance counts that differ (EPS
caps matter), several benchmarks (proportions matter), reasoning / dialogue / pre-training
sources in the formats their mixes expect; deterministic."""

from collections import Counter

from optiml_engine.data.synthetic_mix import synthetic_mix_tasks


def test_demo_bench_tasks():
    tasks = synthetic_mix_tasks(seed=0, instances_per_task=12)
    by_benchmark = Counter(t.benchmark for t in tasks)
    assert by_benchmark == {"superni": 18, "promptsource": 18, "flan": 17, "crossfit": 17,
                            "reasoning": 4, "dialogue": 3, "pretraining": 3}
    sizes = [len(t.instances) for t in tasks if t.benchmark == "superni"]
    assert sizes[:6] == [20, 320, 80, 20, 320, 80]  # task i of superni is task 4i: SIZES[4i % 6]
    assert len({t.dataset for t in tasks}) == len(tasks)  # nothing de-duplicated away
    cot = next(t for t in tasks if t.benchmark == "reasoning")
    assert len(cot.instances) == 12
    assert all(i.outputs[0].split(". So the answer is ")[1].rstrip(".").isdigit()
               for i in cot.instances)
    text = next(t for t in tasks if t.benchmark == "pretraining")
    assert all(i.input == "" for i in text.instances)
    dialogue = next(t for t in tasks if t.benchmark == "dialogue")
    assert dialogue.category == "Dialogue Generation"
    assert all(i.input.endswith("\nAssistant:") for i in dialogue.instances)
    again = synthetic_mix_tasks(seed=0, instances_per_task=12)
    assert [i.to_dict() for t in again for i in t.instances] == \
        [i.to_dict() for t in tasks for i in t.instances]
