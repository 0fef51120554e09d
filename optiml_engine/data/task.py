"""The one in-memory model every task source reads into: a `Task` holding `Instance`s.

Metric names follow the paper's evaluation: `accuracy` (rank classification over answer options),
`exact_match` and `rouge_l` (greedy generation scored against every reference, max over references).
"""

from __future__ import annotations

from dataclasses import dataclass, field

METRICS = ("accuracy", "exact_match", "rouge_l")


@dataclass
class Instance:
    """One input with one or more acceptable reference outputs.

    `options` are the answer choices for classification (scored by rank classification); None for
    free-form generation.
    """

    id: str
    input: str
    outputs: list[str]
    options: list[str] | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "input": self.input, "outputs": list(self.outputs),
                "options": None if self.options is None else list(self.options)}

    @classmethod
    def from_dict(cls, d: dict) -> Instance:
        return cls(id=d["id"], input=d["input"], outputs=list(d["outputs"]),
                   options=None if d.get("options") is None else list(d["options"]))


@dataclass
class Example:
    """A demonstration written by the task author (Super-NI positive/negative examples)."""

    input: str
    output: str
    explanation: str = ""


@dataclass
class Task:
    """A task: an instruction (`definition`), demonstrations and instances.

    `benchmark` is the collection it came from (superni, promptsource, flan, ...); `category` is the
    task type that the held-out levels group by; `dataset` names the underlying dataset so that the
    same data arriving through several benchmarks can be de-duplicated; `source` is the file read.
    """

    name: str
    benchmark: str
    category: str
    definition: str
    instances: list[Instance]
    positive_examples: list[Example] = field(default_factory=list)
    negative_examples: list[Example] = field(default_factory=list)
    metric: str = "rouge_l"
    dataset: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def has_options(self) -> bool:
        return any(inst.options for inst in self.instances)
