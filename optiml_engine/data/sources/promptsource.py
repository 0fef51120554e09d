"""PromptSource: `templates.yaml` files applied to dataset records in local JSONL files.

Layout: `<root>/<dataset>/[<subset>/]templates.yaml`, with the records (`*.jsonl`, e.g.
`train.jsonl`) in the same directory. Each template is one task (as in P3/T0 and OPT-IML Bench),
named `<dataset>_<subset>_<template name>`. The Jinja renders in a sandbox (see `sandbox.py`); the
output is split at `|||` into input and target; rows where either side renders empty are skipped
for that template (PromptSource's own convention) and counted in `meta["skipped_empty"]`.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ...errors import OptimlError, parse_yaml, read_text
from ..task import Instance, Task
from .common import expand, read_jsonl, split_of
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


def load_promptsource(path: str | Path, records: str | Path | None = None,
                      limits: TemplateLimits = DEFAULT_LIMITS) -> list[Task]:
    """Tasks for every template under `path`; `records` overrides where the JSONL rows are;
    `limits` bound each render (see sandbox.py)."""
    tasks = []
    for file in expand(path, ("templates.yaml",)):
        data = read_templates(file)
        dataset = str(data.get("dataset") or file.parent.name)
        subset = data.get("subset")
        row_files = expand(records, (".jsonl",)) if records else sorted(file.parent.glob("*.jsonl"))
        if not row_files:
            raise OptimlError(str(file), "no records (*.jsonl) beside the templates",
                              "export the dataset rows to JSONL next to templates.yaml")
        rows = [(f"{rf}:{ln}", rec) for rf in row_files for ln, rec in read_jsonl(rf)]
        full = f"{dataset}/{subset}" if subset else dataset
        for key, template in sorted(data["templates"].items(), key=lambda kv: str(kv[0])):
            if not isinstance(template, dict) or not isinstance(template.get("jinja"), str):
                raise OptimlError(f"{file}: template {key}", "has no 'jinja' string")
            name = slug(f"{dataset}_{subset or ''}_{template.get('name', key)}")
            tasks.append(_template_task(name, full, template, rows, f"{file}: template {key}",
                                        limits))
    return tasks


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
    # rank classification only when every target is one of its choices
    classify = bool(instances) and all(i.options and i.outputs[0] in i.options for i in instances)
    if not classify:
        for inst in instances:
            inst.options = None
    meta = dict(template.get("metadata") or {})
    meta.update(template_id=template.get("id"), skipped_empty=skipped, template_name=template.get(
        "name"), instance_splits=splits)
    return Task(name=name, benchmark="promptsource", category="", definition="",
                instances=instances, metric="accuracy" if classify else "rouge_l",
                dataset=dataset, source=where, meta=meta)
