"""The in-training subset: deterministic, stratified by kind of scoring and by category."""

from optiml_engine.data.task import Instance, Task
from optiml_engine.eval.suite import EvalTask, stratified_order, subset, synthetic_suite


def _et(name, category, level, rank):
    options = ["yes", "no"] if rank else None
    insts = [Instance(f"{name}-{i}", f"q{i}", ["yes" if rank else f"a{i}"], options)
             for i in range(5)]
    # not Super-NI: its tasks are all scored by generation under the paper's protocol
    task = Task(name=name, benchmark="crossfit", category=category, definition="Do it.",
                instances=insts)
    return EvalTask(task, level, insts)


def test_subset_alternates_kinds_and_categories():
    # By name alone the first four would be a1 a2 a3 a4: one category, generation only.
    suite = [_et("a1", "A", "heldout_task", False), _et("a2", "A", "heldout_task", False),
             _et("a3", "A", "heldout_task", False), _et("a4", "A", "heldout_task", False),
             _et("b1", "B", "heldout_task", False), _et("c1", "C", "heldout_task", True),
             _et("c2", "C", "heldout_task", True), _et("d1", "D", "heldout_task", True),
             _et("z1", "Z", "heldout_category", True)]
    assert [et.name for et in stratified_order(suite[:8])] == [
        "c1", "a1", "d1", "b1", "c2", "a2", "a3", "a4"]
    picked = subset(list(reversed(suite)), 4, 3)  # the input order does not matter
    assert [(et.level, et.name) for et in picked] == [
        ("heldout_category", "z1"), ("heldout_task", "c1"), ("heldout_task", "a1"),
        ("heldout_task", "d1"), ("heldout_task", "b1")]
    assert [len(et.instances) for et in picked] == [3, 3, 3, 3, 3]


def test_subset_of_the_synthetic_layout():
    from optiml_engine.eval.protocol import ENGINE

    # the engine's protocol ranks the synthetic (Super-NI) label tasks: both kinds alternate
    picked = subset(synthetic_suite(0, 10), 4, 2, ENGINE)
    assert [(et.level, et.task.category, et.name) for et in picked] == [
        ("heldout_category", "Membership", "task5066_synthetic_contains_letter"),
        ("heldout_category", "Text Matching", "task5061_synthetic_same_word"),
        ("heldout_category", "Membership", "task5067_synthetic_number_in_list"),
        ("heldout_category", "Text Matching", "task5062_synthetic_anagram_pair"),
        ("heldout_instance", "Number Comparison", "task5051_synthetic_is_even"),
        ("heldout_instance", "Arithmetic", "task5011_synthetic_add_two"),
        ("heldout_instance", "Palindrome Detection", "task5041_synthetic_is_palindrome_word"),
        ("heldout_instance", "Case Conversion", "task5006_synthetic_uppercase_word"),
        ("heldout_task", "Number Comparison", "task5055_synthetic_above_fifty"),
        ("heldout_task", "Arithmetic", "task5015_synthetic_word_problem_add"),
        ("heldout_task", "Palindrome Detection", "task5045_synthetic_palindrome_label"),
        ("heldout_task", "Case Conversion", "task5010_synthetic_title_case"),
    ]
