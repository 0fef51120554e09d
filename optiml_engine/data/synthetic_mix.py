"""The synthetic bench for the ablation demos (source format `synthetic_mix`): what the paper's
studies vary, on generated data, so each `recipes/ablations/demo-*` sweep can run on a laptop.

- the 70 synthetic Super-NI tasks (data/synthetic.py) spread round-robin over four pseudo
  benchmarks (superni, promptsource, flan, crossfit: §4.3 proportions), with instance counts
  cycling through SIZES so that the per-task cap matters (§4.2 EPS); each task is its own dataset
  (nothing is de-duplicated away);
- reasoning tasks (benchmark `reasoning`, chain-of-thought answers written as the cot source
  writes them, "... So the answer is X." by default: §4.6), dialogue tasks (benchmark
  `dialogue`, category Dialogue Generation: §4.7) and pre-training text (benchmark
  `pretraining`, empty source: §4.5).

Deterministic from the seed, as data/synthetic.py is.
"""

from __future__ import annotations

import random

from .sources.seq2seq import COT_TARGET
from .synthetic import synthetic_tasks
from .task import Instance, Task

SIZES = (20, 40, 80, 160, 320, 640)  # instances per instruction task, cycled by task index
BENCHMARKS = ("superni", "promptsource", "flan", "crossfit")
REASONING_TASKS, DIALOGUE_TASKS, PRETRAINING_TASKS = 4, 3, 3
COT_DEFINITION = "Answer the following question by reasoning step by step."
NAMES = ("Ada", "Bo", "Cy", "Dee", "Eve", "Finn", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu")
THINGS = ("apples", "books", "coins", "cups", "keys", "pens", "shells", "stones")


def _instruction_tasks(seed: int) -> list[Task]:
    tasks = synthetic_tasks(seed, max(SIZES))
    for i, task in enumerate(tasks):
        task.instances = task.instances[:SIZES[i % len(SIZES)]]
        task.benchmark = BENCHMARKS[i % len(BENCHMARKS)]
        task.dataset = task.name
    return tasks


def _reasoning(seed: int, k: int, count: int, target: str) -> Task:
    rng = random.Random(f"{seed}:reasoning:{k}")
    instances, seen = [], set()
    while len(instances) < count:
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(1, 9)
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        if k % 2:
            q = f"{name} has {a} {thing}, gets {b} more and gives away {c}. How many now?"
            why = f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}."
            answer = a + b - c
        else:
            q = f"{name} has {c} bags of {a} {thing} and {b} loose ones. How many in all?"
            why = f"{c} x {a} = {c * a}. {c * a} + {b} = {c * a + b}."
            answer = c * a + b
        if q in seen:
            continue
        seen.add(q)
        instances.append(Instance(id=f"cot{k}-{len(instances)}", input=q,
                                  outputs=[target.format(rationale=why, answer=answer)]))
    return Task(name=f"reasoning_synthetic_arith{k}", benchmark="reasoning",
                category="Chain-of-Thought Reasoning", definition=COT_DEFINITION,
                instances=instances, metric="rouge_l", dataset=f"synthetic_arith{k}")


def _dialogue(seed: int, k: int, count: int) -> Task:
    rng = random.Random(f"{seed}:dialogue:{k}")
    instances, seen = [], set()
    while len(instances) < count:
        name, thing, n = rng.choice(NAMES), rng.choice(THINGS), rng.randint(2, 99)
        turns = [f"User: Hi, I am {name} and I keep {n} {thing}.",
                 f"Assistant: Nice to meet you, {name}!"]
        question, answer = [("How many do I keep?", f"You keep {n} {thing}."),
                            ("What is my name?", f"Your name is {name}."),
                            ("What do I keep?", f"You keep {thing}.")][k % 3]
        context = "\n".join([*turns, f"User: {question}", "Assistant:"])
        if context in seen:
            continue
        seen.add(context)
        instances.append(Instance(id=f"dlg{k}-{len(instances)}", input=context,
                                  outputs=[answer]))
    return Task(name=f"dialogue_synthetic_chat{k}", benchmark="dialogue",
                category="Dialogue Generation", definition="", instances=instances,
                metric="rouge_l", dataset=f"synthetic_chat{k}")


def _pretraining(seed: int, k: int, count: int) -> Task:
    rng = random.Random(f"{seed}:pretraining:{k}")
    instances = []
    for i in range(count):
        sentences = [f"{rng.choice(NAMES)} found {rng.randint(2, 99)} {rng.choice(THINGS)} "
                     f"near the {rng.choice(('river', 'hill', 'market', 'school'))}."
                     for _ in range(rng.randint(2, 5))]
        instances.append(Instance(id=f"txt{k}-{i}", input="", outputs=[" ".join(sentences)]))
    return Task(name=f"pretraining_synthetic_text{k}", benchmark="pretraining",
                category="Pre-training Text", definition="", instances=instances,
                metric="rouge_l", dataset=f"synthetic_text{k}")


def synthetic_mix_tasks(seed: int = 0, instances_per_task: int = 200,
                        cot_target: str = COT_TARGET) -> list[Task]:
    """Every task of the demo bench; `instances_per_task` sizes the reasoning, dialogue and
    pre-training tasks (the instruction tasks follow SIZES); reasoning targets are written as the
    bench's cot sources are (`cot_target`, prompts.reasoning_target)."""
    n = instances_per_task
    return [*_instruction_tasks(seed),
            *(_reasoning(seed, k, n, cot_target) for k in range(REASONING_TASKS)),
            *(_dialogue(seed, k, n) for k in range(DIALOGUE_TASKS)),
            *(_pretraining(seed, k, n) for k in range(PRETRAINING_TASKS))]
