"""The embedded synthetic bench: size, determinism, file round trip and label correctness."""

import collections
import json
import re

import pytest

from optiml_engine.data.sources.superni import load_superni
from optiml_engine.data.synthetic import synthetic_tasks, write_synthetic_superni


@pytest.fixture(scope="module")
def tasks():
    return synthetic_tasks(seed=3, instances_per_task=60)


def by_slug(tasks, slug):
    return next(t for t in tasks if t.name.split("_synthetic_")[1] == slug)


def test_size_categories_and_mix(tasks):
    assert len(tasks) >= 60
    per_category = collections.Counter(t.category for t in tasks)
    assert len(per_category) >= 12 and min(per_category.values()) >= 5
    metrics = collections.Counter(t.metric for t in tasks)
    assert metrics["accuracy"] >= 20 and metrics["exact_match"] >= 20 and metrics["rouge_l"] >= 1
    assert len({t.name for t in tasks}) == len(tasks)
    # one skill per category: all tasks of a category are either classification or free-form
    kinds = collections.defaultdict(set)
    for t in tasks:
        kinds[t.category].add(t.metric == "accuracy")
    assert all(len(k) == 1 for k in kinds.values())


def test_instances_short_distinct_and_answer_in_options(tasks):
    for t in tasks:
        assert len(t.instances) == 60, t.name
        assert len({i.input for i in t.instances}) == 60, t.name
        assert len({i.id for i in t.instances}) == 60
        assert len(t.definition) > 20 and len(t.positive_examples) == 2
        demo_inputs = {e.input for e in t.positive_examples}
        assert not demo_inputs & {i.input for i in t.instances}
        for inst in t.instances:
            assert len(inst.input.encode()) < 150 and len(inst.outputs[0].encode()) < 150
            assert re.fullmatch(r"task\d+-[0-9a-f]{32}", inst.id)
            if t.metric == "accuracy":
                assert inst.outputs[0] in inst.options
            else:
                assert inst.options is None


def test_labels_by_independent_rules(tasks):
    for inst in by_slug(tasks, "reverse_letters").instances:
        assert inst.outputs == [inst.input[::-1]]
    for inst in by_slug(tasks, "add_two").instances:
        a, b = inst.input.split(" + ")
        assert int(inst.outputs[0]) == int(a) + int(b)
    for inst in by_slug(tasks, "sort_numbers_descending").instances:
        got = [int(x) for x in inst.outputs[0].split(", ")]
        assert got == sorted((int(x) for x in inst.input.split(", ")), reverse=True)
    for inst in by_slug(tasks, "is_palindrome_word").instances:
        assert inst.outputs[0] == ("yes" if inst.input == inst.input[::-1] else "no")
    for inst in by_slug(tasks, "count_vowels").instances:
        assert inst.outputs[0] == str(len(re.findall("[aeiou]", inst.input)))
    labels = collections.Counter(i.outputs[0] for i in by_slug(tasks, "nli_three_way").instances)
    assert set(labels) == {"entailment", "neutral", "contradiction"}


def test_files_deterministic_and_read_back(tmp_path, tasks):
    a = write_synthetic_superni(tmp_path / "a", seed=3, instances_per_task=60)
    b = write_synthetic_superni(tmp_path / "b", seed=3, instances_per_task=60)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    c = write_synthetic_superni(tmp_path / "c", seed=4, instances_per_task=60)
    assert a[0].read_bytes() != c[0].read_bytes()
    raw = json.loads(a[0].read_text())
    assert list(raw)[:6] == ["Contributors", "Source", "URL", "Categories", "Reasoning",
                             "Definition"]
    loaded = {t.name: t for t in load_superni(tmp_path / "a")}
    assert set(loaded) == {t.name for t in tasks}
    for t in tasks:
        assert loaded[t.name].instances == t.instances
        assert loaded[t.name].definition == t.definition


def test_variants_extend_the_catalogue():
    many = synthetic_tasks(seed=0, instances_per_task=3, num_tasks=150)
    assert len(many) == 150 and len({t.name for t in many}) == 150
    assert many[70].name.endswith("_v2") and many[70].category == many[0].category
