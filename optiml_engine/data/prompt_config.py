"""The bench YAML's `prompts` section: how training prompts look (see `prompts.py`), the target
of reasoning examples, and the instruction sentences of the benchmarks that ship none.

```yaml
prompts:
  delimiter: random             # [fixed]; random: one of `delimiters` per example (§2.4, fn. 5)
  delimiters: ["\nAnswer:", ...]   # [the paper's eight]
  reasoning_instruction: Answer the following question by reasoning step by step.  # [none]
  reasoning_target: "{rationale} The answer is {answer}"
                                # [{rationale} So the answer is {answer}.]
  instance_instructions: [crossfit, exmix, t5]   # [none]: benchmarks whose tasks get one
                                # instruction sentence, shown with every instance (§2.2)
  instructions: {acronym_identification: Find the acronym ...}   # by task name, then dataset
  missing_instruction: fail     # [fail]; none: such a task goes without (listed in the report)
  list_options: false           # [true]: an "Options:" list after classification inputs that
                                # do not show their options (see prompts.py)
```
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from ..errors import OptimlError
from .prompts import DELIMITER_MODES, PAPER_DELIMITERS, PromptStyle
from .sources.seq2seq import COT_TARGET
from .task import Task

KEYS = {"delimiter", "delimiters", "reasoning_instruction", "reasoning_target",
        "instance_instructions", "instructions", "missing_instruction", "list_options"}
MISSING = ("fail", "none")


@dataclass
class PromptConfig:
    style: PromptStyle = field(default_factory=PromptStyle)
    reasoning_target: str = COT_TARGET
    instructions: dict[str, str] = field(default_factory=dict)
    missing_instruction: str = "fail"


def _strings(value, where: str, fix: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise OptimlError(where, f"expected a list of non-empty strings, got {value!r}", fix)
    return value


def parse_prompts(raw: object, where: str) -> PromptConfig:
    """`prompts` of a bench YAML at `where` (None: every default)."""
    if raw is None:
        return PromptConfig()
    if not isinstance(raw, dict):
        raise OptimlError(where, "must be a mapping", "see optiml_engine/data/prompt_config.py")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise OptimlError(where, f"unknown key(s) {', '.join(unknown)}",
                          f"allowed: {', '.join(sorted(KEYS))}")
    mode = raw.get("delimiter", "fixed")
    if mode not in DELIMITER_MODES:
        raise OptimlError(f"{where}.delimiter", f"{mode!r} is not one of "
                          f"{', '.join(DELIMITER_MODES)}", "random draws one per example")
    delimiters = _strings(raw.get("delimiters", list(PAPER_DELIMITERS)), f"{where}.delimiters",
                          'e.g. ["\\nAnswer:", " A:"]')
    if "delimiters" in raw and mode != "random":
        raise OptimlError(f"{where}.delimiters", "is used only with delimiter: random",
                          "set delimiter: random or remove delimiters")
    instruction = raw.get("reasoning_instruction", "")
    if not isinstance(instruction, str):
        raise OptimlError(f"{where}.reasoning_instruction", f"expected a string, got "
                          f"{instruction!r}")
    target = raw.get("reasoning_target", COT_TARGET)
    fields = {f for _, f, _, _ in string.Formatter().parse(target) if f is not None} \
        if isinstance(target, str) else None
    if fields != {"rationale", "answer"}:
        raise OptimlError(f"{where}.reasoning_target", f"{target!r} must use exactly the fields "
                          "{rationale} and {answer}", 'e.g. "{rationale} The answer is {answer}"')
    benchmarks = _strings(raw.get("instance_instructions", []), f"{where}.instance_instructions",
                          "e.g. [crossfit, exmix, t5]")
    instructions = raw.get("instructions", {}) or {}
    if not isinstance(instructions, dict) or not all(
            isinstance(v, str) and v.strip() for v in instructions.values()):
        raise OptimlError(f"{where}.instructions", "must map task or dataset names to "
                          "instruction sentences", "e.g. {emo: Which emotion does this show?}")
    if instructions and not benchmarks:
        raise OptimlError(f"{where}.instructions", "are used only for the benchmarks of "
                          "instance_instructions, which is empty", "e.g. [crossfit, exmix, t5]")
    missing = raw.get("missing_instruction", "fail")
    if missing not in MISSING:
        raise OptimlError(f"{where}.missing_instruction", f"{missing!r} is not one of "
                          f"{', '.join(MISSING)}")
    list_options = raw.get("list_options", True)
    if not isinstance(list_options, bool):
        raise OptimlError(f"{where}.list_options", f"expected true or false, got "
                          f"{list_options!r}")
    style = PromptStyle(delimiter=mode, delimiters=tuple(delimiters), list_options=list_options,
                        reasoning_instruction=instruction.strip(),
                        instance_instructions=tuple(benchmarks))
    return PromptConfig(style=style, reasoning_target=target,
                        instructions={str(k): v.strip() for k, v in instructions.items()},
                        missing_instruction=missing)


def apply_instructions(tasks: list[Task], cfg: PromptConfig, where: str) -> list[str]:
    """Give every task of `instance_instructions` benchmarks its sentence (as its `definition`,
    found by task name, then dataset; a record's own `definition` stands). Returns the notes for
    the report: tasks left without one (`missing_instruction: none`) and table entries that
    matched no task of the bench."""
    benchmarks = set(cfg.style.instance_instructions)
    used, missing = set(), []
    for task in tasks:
        if task.benchmark not in benchmarks:
            continue
        for key in (task.name, task.dataset):
            if key in cfg.instructions:
                task.definition = cfg.instructions[key]
                used.add(key)
                break
        if not task.definition:
            missing.append(task.name)
    if missing and cfg.missing_instruction == "fail":
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                           else "")
        raise OptimlError(f"{where}: prompts.instructions", f"no instruction sentence for "
                          f"task(s) {shown} (§2.2: one per CrossFit / ExMix / T5 task)",
                          "add `task or dataset: sentence` entries, or set "
                          "missing_instruction: none")
    notes = [f"prompts: no instruction sentence for {name}" for name in missing]
    unused = sorted(set(cfg.instructions) - used)
    if unused:
        notes.append(f"prompts: {len(unused)} instruction(s) match no task of this bench: "
                     + ", ".join(unused))
    return notes
