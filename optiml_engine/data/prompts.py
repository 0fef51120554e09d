"""(source, target) text for a task instance: 0-shot or k-shot, instructions placed per benchmark.

Conventions shared with training and evaluation:
- the target starts with one space (`TARGET_PREFIX`) and the packer joins source and target with
  nothing in between, so " yes" is scored/learned as the continuation of "...Output:";
  `render_choices` gives the targets of every answer option in the same form for rank
  classification;
- demonstrations come from the task's own training instances (`pool`, default all the task's
  instances) and never include the query (same id or same input);
- answer options are listed for classification tasks unless the source already shows every option
  (PromptSource templates with choices in the prompt, FLAN's `{options_}` block);
- pre-training text has no source: the document is the target, so every token is trained on.

A `PromptStyle` (the bench YAML's `prompts` section, see `prompt_config.py`) chooses the layout:
- `delimiter: fixed` (the default): "Input: ...\nOutput:" (Super-NI and the seq2seq benchmarks),
  "Q: ...\nA:" (reasoning), templates as rendered; `random` (OPT-IML, §2.4 footnote 5): every
  example ends with an output delimiter drawn from `delimiters` by (seed, task, instance), the
  same one for its demonstrations;
- `reasoning_instruction`: a line before a reasoning prompt, once above its first question
  (Table 6: "Answer the following question by reasoning step by step.");
- `instance_instructions`: benchmarks whose task `definition` is one instruction sentence shown
  with each instance (§2.2: CrossFit, ExMix and T5, sentences supplied by the bench YAML) rather
  than a "Definition:" block;
- `list_options`: append an "Options:" list to classification instances whose input does not
  show every option (the default); OPT-IML's prompts show options only where the template or
  the task's text does (Figure 1, Table 2), so its bench sets it off.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from .task import Instance, Task

TARGET_PREFIX = " "
# Benchmarks whose instruction lives inside each rendered input (templates), not in `definition`.
TEMPLATED = {"promptsource", "flan"}
NO_SOURCE = {"pretraining"}  # the whole document is the target (§4.5)
# §2.4 footnote 5 (its last entry is printed "\output:", read as "\noutput:")
PAPER_DELIMITERS = ("\nAnswer:", " Answer:", "\nA:", " A:", "\nOutput:", " Output:",
                    "\nanswer:", "\noutput:")
PAPER_REASONING_INSTRUCTION = "Answer the following question by reasoning step by step."
DELIMITER_MODES = ("fixed", "random")


@dataclass(frozen=True)
class PromptStyle:
    delimiter: str = "fixed"
    delimiters: tuple[str, ...] = PAPER_DELIMITERS
    reasoning_instruction: str = ""
    instance_instructions: tuple[str, ...] = ()
    list_options: bool = True

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> PromptStyle:
        """The style a bench manifest records (`manifest["prompts"]`); None: the default."""
        if not d:
            return cls()
        return cls(delimiter=d["delimiter"], delimiters=tuple(d["delimiters"]),
                   reasoning_instruction=d["reasoning_instruction"],
                   instance_instructions=tuple(d["instance_instructions"]),
                   list_options=d.get("list_options", True))

    def output_delimiter(self, task: Task, instance: Instance, seed: int) -> str | None:
        """The drawn delimiter of this example under `random`; None under `fixed`."""
        if self.delimiter != "random":
            return None
        return random.Random(f"{seed}:delimiter:{task.name}:{instance.id}").choice(
            self.delimiters)


FIXED = PromptStyle()


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


def _body(task: Task, inst: Instance, list_options: bool, style: PromptStyle = FIXED,
          delimiter: str | None = None) -> str:
    """The instance as the benchmark presents it, ending where the answer starts; `delimiter`
    replaces the fixed one (templates have none) when the style draws one."""
    text = inst.input
    if (list_options and style.list_options and inst.options
            and not all(o in text for o in inst.options)):
        text = f"{text}\n{options_text(inst.options)}"
    if task.benchmark == "dialogue":
        return text
    instance_level = task.benchmark in style.instance_instructions and task.definition
    lines = [task.definition] if instance_level else []
    if task.benchmark in TEMPLATED or instance_level:
        query, fixed = text, "" if task.benchmark in TEMPLATED else "\nOutput:"
    elif task.benchmark == "reasoning":
        query, fixed = (f"Q: {text}", "\nA:") if delimiter is None else (text, "")
    else:
        query, fixed = f"Input: {text}", "\nOutput:"
    return "\n".join([*lines, query]) + (fixed if delimiter is None else delimiter)


def render(task: Task, instance: Instance, shots: int = 0, seed: int = 0,
           pool: list[Instance] | None = None, list_options: bool = True,
           style: PromptStyle = FIXED) -> tuple[str, str]:
    """The (source, target) strings of `instance` with `shots` demonstrations."""
    if task.benchmark in NO_SOURCE:
        return "", TARGET_PREFIX + instance.outputs[0]
    demos = pick_demonstrations(task, instance, shots, seed, pool)
    delimiter = style.output_delimiter(task, instance, seed)
    blocks = []
    if (task.definition and task.benchmark not in TEMPLATED
            and task.benchmark not in style.instance_instructions):
        blocks.append(f"Definition: {task.definition}")
    for demo in demos:
        blocks.append(_body(task, demo, list_options, style, delimiter) + TARGET_PREFIX
                      + demo.outputs[0])
    blocks.append(_body(task, instance, list_options, style, delimiter))
    if task.benchmark == "reasoning" and style.reasoning_instruction:
        # once, on the line above the first question (Table 6; §4.6: "a single prompt that
        # uses an instruction ... followed by examples in the few-shot setting")
        blocks[0] = f"{style.reasoning_instruction}\n{blocks[0]}"
    return "\n\n".join(blocks), TARGET_PREFIX + instance.outputs[0]


def render_choices(task: Task, instance: Instance, shots: int = 0, seed: int = 0,
                   pool: list[Instance] | None = None, style: PromptStyle = FIXED
                   ) -> tuple[str, list[str]]:
    """The source and one target per answer option, for rank classification."""
    if not instance.options:
        raise ValueError(f"{task.name}: instance {instance.id} has no answer options")
    source, _ = render(task, instance, shots, seed, pool, style=style)
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
