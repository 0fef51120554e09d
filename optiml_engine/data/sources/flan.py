"""FLAN-style templates: per dataset, a list of (input pattern, target pattern) pairs.

FLAN ships its templates as a Python dict, which we never import or execute. The user exports it
to data: `templates.json` or `templates.yaml` at `<root>`, mapping a dataset name to a list of
`[input_pattern, target_pattern]` pairs using `str.format` fields named after record fields, plus
`{options_}` (the rendered options block) and `{answer}`. Records are `<root>/<dataset>.jsonl` or
`<root>/<dataset>/*.jsonl`; a record may carry `options` (a list of strings), making the task a
classification task. Each dataset is one task (as in FLAN and OPT-IML Bench); each record is
rendered with one of its dataset's patterns, picked by a seeded hash of the record's position so a
rebuild gives the same text.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ...errors import OptimlError, parse_json, parse_yaml, read_text
from ..task import Instance, Task
from .common import read_jsonl, split_of
from .sandbox import (
    DEFAULT_LIMITS,
    TemplateLimits,
    TemplateRefused,
    pattern_fields,
    render_pattern,
)

FLAN_TASK_CAP = 30_000  # the paper's per-task instance cap for FLAN (bench default)


def options_block(options: list[str]) -> str:
    return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def read_flan_templates(root: Path, limits: TemplateLimits = DEFAULT_LIMITS
                        ) -> tuple[Path, dict[str, list[tuple[str, str]]]]:
    for name in ("templates.json", "templates.yaml", "templates.yml"):
        file = root / name
        if file.is_file():
            break
    else:
        raise OptimlError(str(root), "no templates.json / templates.yaml",
                          "export FLAN's patterns as {dataset: [[input, target], ...]}")
    text = read_text(file)
    fix = "export FLAN's patterns as {dataset: [[input, target], ...]}"
    data = (parse_json(text, str(file), fix) if file.suffix == ".json"
            else parse_yaml(text, str(file), fix=fix))
    if not isinstance(data, dict):
        raise OptimlError(str(file), "must map dataset names to lists of pattern pairs")
    templates = {}
    for dataset, pairs in data.items():
        where = f"{file}: {dataset}"
        if not isinstance(pairs, list) or not pairs:
            raise OptimlError(where, "needs a non-empty list of [input, target] pattern pairs")
        for i, pair in enumerate(pairs):
            if (not isinstance(pair, list | tuple) or len(pair) != 2
                    or not all(isinstance(p, str) for p in pair)):
                raise OptimlError(f"{where}[{i}]", "is not an [input, target] pair of strings")
            try:
                pattern_fields(pair[0], limits)
                pattern_fields(pair[1], limits)
            except TemplateRefused as err:
                raise OptimlError(f"{where}[{i}]", str(err), err.fix) from err
        templates[str(dataset)] = [tuple(p) for p in pairs]
    return file, templates


def _record_files(root: Path, dataset: str) -> list[Path]:
    single = root / f"{dataset}.jsonl"
    if single.is_file():
        return [single]
    return sorted((root / dataset).glob("*.jsonl")) if (root / dataset).is_dir() else []


def load_flan(path: str | Path, seed: int = 0,
              limits: TemplateLimits = DEFAULT_LIMITS) -> list[Task]:
    root = Path(path)
    file, templates = read_flan_templates(root, limits)
    tasks = []
    for dataset, pairs in templates.items():
        files = _record_files(root, dataset)
        if not files:
            raise OptimlError(f"{file}: {dataset}", "no records for this dataset",
                              f"put them in {dataset}.jsonl or {dataset}/*.jsonl")
        instances, splits = [], {}
        for rf in files:
            for lineno, record in read_jsonl(rf):
                instances.append(_instance(dataset, pairs, record, len(instances), seed,
                                           f"{file}: {dataset}: record {rf}:{lineno}", limits))
                if split := split_of(rf):
                    splits[instances[-1].id] = split
        classify = all(i.options for i in instances)
        if not classify:  # one metric per task: inverted patterns make the task free-form
            for inst in instances:
                inst.options = None
        tasks.append(Task(name=f"flan_{dataset}", benchmark="flan", category="", definition="",
                          instances=instances, metric="accuracy" if classify else "rouge_l",
                          dataset=dataset, source=str(file),
                          meta={"patterns": len(pairs), "instance_splits": splits}))
    return tasks


def _instance(dataset: str, pairs: list, record: dict, index: int, seed: int,
              where: str, limits: TemplateLimits) -> Instance:
    digest = hashlib.sha256(f"{seed}:{dataset}:{index}".encode()).digest()
    in_pattern, out_pattern = pairs[int.from_bytes(digest[:8], "little") % len(pairs)]
    options = record.get("options")
    if options is not None and (not isinstance(options, list) or not options
                                or not all(isinstance(o, str) for o in options)):
        raise OptimlError(where, "'options' must be a non-empty list of strings")
    values = {k: v for k, v in record.items() if k != "options"}
    values["options_"] = options_block(options) if options else ""
    try:
        text = render_pattern(in_pattern, values, limits).strip()
        target = render_pattern(out_pattern, values, limits).strip()
    except TemplateRefused as err:
        fix = err.fix if err.fix != TemplateRefused.fix else \
            "add the field to the record or fix the pattern"
        raise OptimlError(where, f"{err} (pattern {in_pattern!r} -> {out_pattern!r})",
                          fix) from err
    if options and target not in options:
        options = None  # an inverted pattern: the target is an input field, not an option
    return Instance(id=f"flan_{dataset}-{index}", input=text, outputs=[target], options=options)
