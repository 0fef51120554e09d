"""(source, target) text for a task instance: 0-shot or k-shot, instructions placed per benchmark.

Conventions shared with training and evaluation:
- the target starts with one space (`TARGET_PREFIX`) and the packer joins source and target with
  nothing in between, so " yes" is scored/learned as the continuation of "...Output:";
  `render_choices` gives the targets of every answer option in the same form for rank
  classification;
- demonstrations come from the task's own training instances (`pool`, default all the task's
  instances) and never include the query (same id or same input);
- answer options are listed for classification tasks unless the source already shows every option
  (PromptSource templates with choices in the prompt, FLAN's `{options_}` block).
"""

from __future__ import annotations

import random

from .task import Instance, Task

TARGET_PREFIX = " "
# Benchmarks whose instruction lives inside each rendered input (templates), not in `definition`.
TEMPLATED = {"promptsource", "flan"}


def pick_demonstrations(task: Task, query: Instance, shots: int, seed: int,
                        pool: list[Instance] | None = None) -> list[Instance]:
    """`shots` instances of the task, drawn deterministically, never the query itself."""
    if shots <= 0:
        return []
    candidates = [i for i in (task.instances if pool is None else pool)
                  if i.id != query.id and i.input != query.input]
    rng = random.Random(f"{seed}:{task.name}:{query.id}")
    return rng.sample(candidates, min(shots, len(candidates)))


def options_text(options: list[str]) -> str:
    return "Options:\n" + "\n".join(f"- {o}" for o in options)


def _body(task: Task, inst: Instance, list_options: bool) -> str:
    """The instance as the benchmark presents it, ending where the answer starts."""
    text = inst.input
    if list_options and inst.options and not all(o in text for o in inst.options):
        text = f"{text}\n{options_text(inst.options)}"
    if task.benchmark in TEMPLATED or task.benchmark == "dialogue":
        return text
    if task.benchmark == "reasoning":
        return f"Q: {text}\nA:"
    return f"Input: {text}\nOutput:"


def render(task: Task, instance: Instance, shots: int = 0, seed: int = 0,
           pool: list[Instance] | None = None, list_options: bool = True) -> tuple[str, str]:
    """The (source, target) strings of `instance` with `shots` demonstrations."""
    demos = pick_demonstrations(task, instance, shots, seed, pool)
    blocks = []
    if task.definition and task.benchmark not in TEMPLATED:
        blocks.append(f"Definition: {task.definition}")
    for demo in demos:
        blocks.append(_body(task, demo, list_options) + TARGET_PREFIX + demo.outputs[0])
    blocks.append(_body(task, instance, list_options))
    return "\n\n".join(blocks), TARGET_PREFIX + instance.outputs[0]


def render_choices(task: Task, instance: Instance, shots: int = 0, seed: int = 0,
                   pool: list[Instance] | None = None) -> tuple[str, list[str]]:
    """The source and one target per answer option, for rank classification."""
    if not instance.options:
        raise ValueError(f"{task.name}: instance {instance.id} has no answer options")
    source, _ = render(task, instance, shots, seed, pool)
    return source, [TARGET_PREFIX + o for o in instance.options]


def fit_to_length(src_ids: list[int], tgt_ids: list[int], max_tokens: int,
                  min_source: int = 1) -> tuple[list[int], list[int]]:
    """Cut an example to at most `max_tokens` (the sequence length minus the separators the packer
    adds). The source loses tokens from the left (the query and its "Output:" cue sit at its end,
    demonstrations and instructions at its start); the target keeps its start and is cut only when
    it alone leaves less than `min_source` tokens of source."""
    if len(src_ids) + len(tgt_ids) <= max_tokens:
        return src_ids, tgt_ids
    tgt_ids = tgt_ids[: max(max_tokens - min_source, 1)]
    keep = max_tokens - len(tgt_ids)
    return (src_ids[len(src_ids) - keep:] if keep > 0 else []), tgt_ids
