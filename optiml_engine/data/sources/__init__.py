"""Task sources: read local benchmark files into `Task` objects.

`load_tasks(path, format)` is the public entry point; `format` is one of `FORMATS`.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import OptimlError
from ..task import Task
from .bbh import load_bbh
from .dialogue import load_dialogue
from .flan import load_flan
from .mmlu import load_mmlu
from .promptsource import load_promptsource
from .raft import load_raft
from .sandbox import DEFAULT_LIMITS, TemplateLimits
from .seq2seq import load_cot, load_seq2seq
from .superni import load_superni
from .text import load_text

FORMATS = ("superni", "promptsource", "flan", "seq2seq", "cot", "dialogue")
# Benchmarks only evaluated, never trained on (§6.1): readable here, not bench sources.
EVAL_FORMATS = {"mmlu": load_mmlu, "bbh": load_bbh, "raft": load_raft}


def load_tasks(path: str | Path, format: str, *, benchmark: str | None = None,
               split: str | None = None, records: str | Path | None = None,
               seed: int = 0, limits: TemplateLimits = DEFAULT_LIMITS,
               task_per: str = "template", cot_target: str | None = None) -> list[Task]:
    """Read every task at `path` in `format`.

    `benchmark` names the collection for the generic formats (e.g. `unifiedskg`, `crossfit`,
    `exmix`, `t5` for seq2seq); `split` keeps only Super-NI tasks of that official split;
    `records` points PromptSource templates at their JSONL rows; `seed` picks FLAN patterns;
    `limits` bound the time and size of each PromptSource / FLAN template render;
    `task_per` makes a PromptSource task one template or one dataset (its templates merged,
    each record's drawn by `seed`); `cot_target` lays out chain-of-thought references
    ("{rationale} ... {answer}").
    """
    if format == "superni":
        tasks = load_superni(path, split=split)
    elif format == "promptsource":
        tasks = load_promptsource(path, records=records, limits=limits, task_per=task_per,
                                  seed=seed)
    elif format == "flan":
        tasks = load_flan(path, seed=seed, limits=limits)
    elif format == "seq2seq":
        tasks = load_seq2seq(path, benchmark=benchmark or "seq2seq")
    elif format == "cot":
        tasks = load_cot(path, benchmark=benchmark or "reasoning",
                         **({"target": cot_target} if cot_target else {}))
    elif format == "text":  # pre-training documents for the pre-training mix
        tasks = load_text(path, benchmark=benchmark or "pretraining")
    elif format == "dialogue":
        tasks = load_dialogue(path, benchmark=benchmark or "dialogue")
    elif format in EVAL_FORMATS:
        tasks = EVAL_FORMATS[format](path)
    else:
        raise OptimlError(str(path), f"unknown task format {format!r}",
                          f"use one of {', '.join((*FORMATS, *EVAL_FORMATS))}")
    if benchmark and format in ("superni", "promptsource", "flan"):
        for task in tasks:
            task.benchmark = benchmark
    return tasks


__all__ = ["EVAL_FORMATS", "FORMATS", "TemplateLimits", "load_tasks"]
