"""PromptSource: `templates.yaml` files applied to dataset records in local JSONL files.

Layout: `<root>/<dataset>/[<subset>/]templates.yaml`, with the records in the same directory:
JSONL, parquet or a `datasets` `save_to_disk` directory (see `records.py`).

`task_per` says what a task is:
- `template` (P3 / T0): each template is one task, named `<dataset>_<subset>_<template name>`;
- `dataset` (OPT-IML Bench, Table 1, §4.1: "N examples get N randomly drawn prompts"): a
  dataset's templates are merged into one task, named `<dataset>_<subset>`, and each record is
  rendered with one template drawn for it from (seed, dataset, record index). Caps, EPS weights
  and the level-3 holdout are then per dataset. When the drawn template renders nothing for the
  record (a conditional template), the next template of the record's seeded order is used.

The Jinja renders in a sandbox (see `sandbox.py`); the output is split at `|||` into input and
target; rows where either side renders empty are skipped for that template (PromptSource's own
convention; for a merged task: for every template) and counted in `meta["skipped_empty"]`.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import yaml

from ...errors import OptimlError, parse_yaml, read_text
from ..task import Instance, Task
from .common import expand, read_jsonl, split_of
from .records import read_rows
from .sandbox import DEFAULT_LIMITS, TemplateLimits, TemplateRefused, render_jinja


class _TemplateLoader(yaml.SafeLoader):
    """Safe YAML that reads PromptSource's `!Template` / `!TemplateMetadata` tags as mappings."""


for _tag in ("!Template", "!TemplateMetadata"):
    _TemplateLoader.add_constructor(_tag, lambda loader, node: loader.construct_mapping(node,
                                                                                      deep=True))


def read_templates(path: Path) -> dict:
    data = parse_yaml(read_text(path), str(path), _TemplateLoader,
                      "fix the templates file or remove it from the bench config")
    if not isinstance(data, dict) or not isinstance(data.get("templates"), dict):
        raise OptimlError(str(path), "no 'templates' mapping", "is this a PromptSource file?")
    return data


def slug(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()


def _split(rendered: str) -> list[str]:
    return [part.strip() for part in rendered.split("|||")]


def apply_template(template: dict, record: dict, where: str,
                   limits: TemplateLimits = DEFAULT_LIMITS) -> tuple[str, str, list[str] | None]:
    """(input, target, answer choices or None) for one record; ("", "", None) when skipped."""
    try:
        choices = None
        if template.get("answer_choices"):
            choices = _split(render_jinja(template["answer_choices"], record, limits))
        parts = _split(render_jinja(template["jinja"], {**record, "answer_choices": choices},
                                    limits))
    except TemplateRefused as err:
        raise OptimlError(where, str(err), err.fix) from err
    if len(parts) == 1:
        return "", "", None  # conditional template rendered nothing for this row
    if len(parts) != 2:
        raise OptimlError(where, f"rendered to {len(parts)} parts separated by |||, expected 2",
                          "a template has one ||| between input and target")
    return parts[0], parts[1], choices


TASK_PER = ("template", "dataset")


def _rows(file: Path, records: str | Path | None) -> list[tuple[str, dict]]:
    if records:
        return [(f"{rf}:{ln}", rec) for rf in expand(records, (".jsonl",))
                for ln, rec in read_jsonl(rf)]
    rows = read_rows(file.parent)
    if not rows:
        raise OptimlError(str(file), "no records beside the templates",
                          "put the dataset rows next to templates.yaml: *.jsonl, *.parquet or a "
                          "directory written by datasets' save_to_disk")
    return rows


def load_promptsource(path: str | Path, records: str | Path | None = None,
                      limits: TemplateLimits = DEFAULT_LIMITS, task_per: str = "template",
                      seed: int = 0) -> list[Task]:
    """Tasks for every templates file under `path`, one per template or one per dataset
    (`task_per`, see the module doc; `seed` draws each record's template); `records` overrides
    where the JSONL rows are; `limits` bound each render (see sandbox.py)."""
    if task_per not in TASK_PER:
        raise OptimlError(f"promptsource task_per {task_per!r}", "is not one of "
                          f"{', '.join(TASK_PER)}", "use template (P3) or dataset (OPT-IML)")
    tasks = []
    for file in expand(path, ("templates.yaml",)):
        data = read_templates(file)
        dataset = str(data.get("dataset") or file.parent.name)
        subset = data.get("subset")
        rows = _rows(file, records)
        full = f"{dataset}/{subset}" if subset else dataset
        templates = []
        for key, template in sorted(data["templates"].items(), key=lambda kv: str(kv[0])):
            if not isinstance(template, dict) or not isinstance(template.get("jinja"), str):
                raise OptimlError(f"{file}: template {key}", "has no 'jinja' string")
            templates.append((key, template))
        if task_per == "dataset":
            tasks.append(_dataset_task(slug(f"{dataset}_{subset or ''}"), full, templates, rows,
                                       str(file), limits, seed))
            continue
        for key, template in templates:
            name = slug(f"{dataset}_{subset or ''}_{template.get('name', key)}")
            tasks.append(_template_task(name, full, template, rows, f"{file}: template {key}",
                                        limits))
    return tasks


def _classify_or_generate(instances: list[Instance]) -> str:
    """Rank classification only when every target is one of its choices; otherwise the task is
    generated and scored by ROUGE-L, and no instance keeps options (one metric per task)."""
    classify = bool(instances) and all(i.options and i.outputs[0] in i.options
                                       for i in instances)
    if not classify:
        for inst in instances:
            inst.options = None
    return "accuracy" if classify else "rouge_l"


def _dataset_task(name: str, dataset: str, templates: list[tuple[str, dict]], rows: list,
                  where: str, limits: TemplateLimits, seed: int) -> Task:
    """One task for a dataset: each record rendered with a template drawn for it."""
    instances, skipped, splits, used = [], 0, {}, {}
    for index, (row_where, record) in enumerate(rows):
        order = random.Random(f"{seed}:promptsource:{dataset}:{index}").sample(
            range(len(templates)), len(templates))
        for t in order:
            key, template = templates[t]
            text, target, choices = apply_template(
                template, record, f"{where}: template {key}: record {row_where}", limits)
            if text and target:
                break
        else:
            skipped += 1
            continue
        inst = Instance(id=f"{name}-{index}", input=text, outputs=[target], options=choices)
        instances.append(inst)
        used[inst.id] = str(template.get("name", key))
        if split := split_of(row_where.rsplit(":", 1)[0]):  # the row file's name
            splits[inst.id] = split
    metric = _classify_or_generate(instances)
    meta = {"templates": [str(t.get("name", k)) for k, t in templates], "skipped_empty": skipped,
            "instance_templates": used, "instance_splits": splits}
    return Task(name=name, benchmark="promptsource", category="", definition="",
                instances=instances, metric=metric, dataset=dataset, source=where, meta=meta)


def _template_task(name: str, dataset: str, template: dict, rows: list, where: str,
                   limits: TemplateLimits) -> Task:
    instances, skipped, splits = [], 0, {}
    for index, (row_where, record) in enumerate(rows):
        text, target, choices = apply_template(template, record, f"{where}: record {row_where}",
                                               limits)
        if not text or not target:
            skipped += 1
            continue
        instances.append(Instance(id=f"{name}-{index}", input=text, outputs=[target],
                                  options=choices))
        if split := split_of(row_where.rsplit(":", 1)[0]):  # the row file's name
            splits[instances[-1].id] = split
    metric = _classify_or_generate(instances)
    meta = dict(template.get("metadata") or {})
    meta.update(template_id=template.get("id"), skipped_empty=skipped, template_name=template.get(
        "name"), instance_splits=splits)
    return Task(name=name, benchmark="promptsource", category="", definition="",
                instances=instances, metric=metric, dataset=dataset, source=where, meta=meta)
