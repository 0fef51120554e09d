"""Generic seq2seq JSONL (UnifiedSKG, CrossFit, ExMix and T5 exports) and chain-of-thought JSONL.

seq2seq record: `src`, `tgt` (a string or a list of references), optional `options`, `id`,
`task` (groups records of one file into several tasks; default: the file name), `category`,
`definition`, `dataset`, `split` (the record's original split: train / validation / dev / test;
default: read from the file name, e.g. `validation.jsonl`). UnifiedSKG's own record layout
(`struct_in`, `text_in`, `seq_out`, optional `description`) is accepted too and composed as
UnifiedSKG does: `[description ; ]text_in ; structured knowledge: struct_in`.

chain-of-thought record: `question`, `rationale`, `answer`; the target is the rationale followed
by the answer (`target`, default `COT_TARGET`; OPT-IML, Table 6: "{rationale} The answer is
{answer}"), so the model learns to reason before answering. Answer options, if any, belong in
the question text: the target is free-form (a rationale), so these tasks are never rank-classified.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...errors import OptimlError
from ..task import Instance, Task
from .common import SPLIT_NAMES, expand, read_jsonl, require_str, split_of

COT_ANSWER_PREFIX = "So the answer is"
COT_TARGET = "{rationale} " + COT_ANSWER_PREFIX + " {answer}."


def _options(record: dict, where: str) -> list[str] | None:
    options = record.get("options")
    if options is None:
        return None
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise OptimlError(where, "'options' must be a non-empty list of strings")
    return options


def _seq2seq_pair(record: dict, where: str) -> tuple[str, list[str]]:
    if "src" not in record and "seq_out" in record:  # UnifiedSKG layout
        parts = [record.get("description") or "", require_str(record, "text_in", where)]
        struct = "structured knowledge: " + require_str(record, "struct_in", where)
        text = " ; ".join(p for p in [*parts, struct] if p)
        return text, [require_str(record, "seq_out", where)]
    text = require_str(record, "src", where)
    tgt = record.get("tgt")
    refs = [tgt] if isinstance(tgt, str) else tgt
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise OptimlError(where, "field 'tgt' must be a string or a non-empty list of strings",
                          "give the target text")
    return text, refs


def _cot_pair(record: dict, where: str, target: str = COT_TARGET) -> tuple[str, list[str]]:
    question = require_str(record, "question", where)
    rationale = require_str(record, "rationale", where).strip()
    answer = require_str(record, "answer", where).strip()
    return question, [target.format(rationale=rationale, answer=answer)]


def _load(path: str | Path, benchmark: str, pair: Callable[[dict, str], tuple[str, list[str]]],
          default_category: str, use_options: bool = True) -> list[Task]:
    groups: dict[str, dict] = {}
    for file in expand(path, (".jsonl",)):
        for lineno, record in read_jsonl(file):
            where = f"{file}:{lineno}"
            text, refs = pair(record, where)
            options = _options(record, where) if use_options else None
            if options is not None and not any(r in options for r in refs):
                raise OptimlError(where, f"no reference {refs!r} is among the options",
                                  "add the answer to the options")
            name = f"{benchmark}_{record.get('task') or file.stem}"
            group = groups.setdefault(name, {
                "instances": [], "source": str(file),
                "category": str(record.get("category") or default_category),
                "definition": str(record.get("definition") or ""),
                "dataset": str(record.get("dataset") or record.get("task") or file.stem),
                "splits": {}})
            inst_id = record.get("id")
            group["instances"].append(Instance(
                id=str(inst_id) if inst_id is not None else f"{name}-{len(group['instances'])}",
                input=text, outputs=refs, options=options))
            split = SPLIT_NAMES.get(str(record.get("split", "")).lower()) or split_of(file)
            if split:
                group["splits"][group["instances"][-1].id] = split
    tasks = []
    for name, g in groups.items():
        classify = all(i.options for i in g["instances"])
        tasks.append(Task(name=name, benchmark=benchmark, category=g["category"],
                          definition=g["definition"], instances=g["instances"],
                          metric="accuracy" if classify else "rouge_l", dataset=g["dataset"],
                          source=g["source"], meta={"instance_splits": g["splits"]}))
    return tasks


def load_seq2seq(path: str | Path, benchmark: str = "seq2seq") -> list[Task]:
    return _load(path, benchmark, _seq2seq_pair, "")


def load_cot(path: str | Path, benchmark: str = "reasoning", target: str = COT_TARGET
             ) -> list[Task]:
    """`target` lays out the reference: "{rationale}" and "{answer}" are the record's fields."""
    return _load(path, benchmark, lambda r, w: _cot_pair(r, w, target),
                 "Chain-of-Thought Reasoning", use_options=False)
