"""The bench YAML: which sources, how categories map, caps, de-duplication, the three held-out
levels, the leakage check and the tokenizer. Every key is checked; mistakes name the key.

```yaml
name: opt-iml-bench
seed: 1
tokenizer: byte                 # or a tokenizer.json / GPT-2 vocab directory
max_example_tokens: 2046        # source is left-truncated so source + target fit
train_shots: 0                  # demonstrations in training prompts (paper: off)
superni_options_list: true      # list a Super-NI task's answer options after its input (paper
                                # §5.4: false; the definition names them)
default_cap: 100000             # instances per task (FLAN sources: cap: 30000)
sources:
  - {name: superni, format: superni, path: ${SUPERNI_DIR}, required: true}
  - {name: flan, format: flan, path: flan/, cap: 30000, on_error: skip}
  - {name: promptsource, format: promptsource, path: ps/, task_per: dataset}
                                # task_per: template (P3: one task per template), or dataset
                                # (§4.1: a dataset's templates merged, one drawn per record)
  - {name: superni, format: synthetic, seed: 0, instances_per_task: 200}
categories:                     # non-Super-NI tasks: task name, then dataset, then benchmark
  flan_rte: Textual Entailment
  glue/mrpc: Text Matching
on_unmapped: fail               # or skip (listed in the report)
dedup: {aliases: {glue/mrpc: mrpc}, prefer: [superni, promptsource, flan]}
                                # policy: one_copy (the first in `prefer`) or paper (§2.1: all
                                # copies kept, but those of `drop_from`, default crossfit, exmix,
                                # t5, when the dataset is also in another benchmark)
held_out:
  categories: [Textual Entailment]  # level 1
  level1_datasets: [wic]        # level 1 too, whatever their category (matched like dedup keys,
                                # on the whole dataset name or its first `/` part)
  level2_datasets: [race]       # level 2: every task of these datasets, in any benchmark
  tasks: [task1288_glue_mrpc_paraphrasing]   # and/or tasks_per_category: 1 (drawn by seed)
  instances: 0.1                # fraction (< 1) or count (>= 1) per training task
  level3: random                # or source_splits: rows of the original validation / test
                                # files (or records with split: validation/test) are level 3;
                                # tasks without split information fall back to `instances`
  max_eval_instances: 100       # per task and level
  dev_categories: [Word Analogy]   # evaluation tasks of these categories or of dev_datasets are
  dev_datasets: [race]          # the validation set (§2.3, Table 15), every other one is test
leakage: {n: 13, threshold: 0.5, action: report}   # or drop_train
  # superni_excluded: keep, or drop the tasks of Super-NI's excluded_tasks.txt (§2.3)
  # unit: instance (pairs of instances), or task (§2.3: a training task is flagged when more
  # than `threshold`, default 0.01 then, of an eval task's examples share an n-gram with it;
  # drop_train removes the training task)
prompts: {delimiter: random}    # training prompt layout, instruction sentences: prompt_config.py
templates:                      # limits per render of one record (PromptSource Jinja, FLAN)
  max_seconds: 1.0              # CPU seconds; real templates take microseconds
  max_chars: 1000000            # characters of the output and of anything built on the way;
                                # widths and repeats beyond it are refused before they run
```
Relative paths are read from the config file's directory; `${VAR}` expands environment variables
(in `tokenizer` and source paths; a variable that is not set is an error naming it).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OptimlError, parse_yaml, read_text
from .prompt_config import PromptConfig, parse_prompts
from .sources import FORMATS, TemplateLimits
from .sources.promptsource import TASK_PER

SOURCE_FORMATS = (*FORMATS, "synthetic", "synthetic_mix", "text")  # mix: data/synthetic_mix.py
DEFAULT_CAP = 100_000
DEDUP_POLICIES = ("one_copy", "paper")
PAPER_DROP_FROM = ("crossfit", "exmix", "t5")  # §2.1: their copies of datasets seen elsewhere


@dataclass
class SourceConfig:
    name: str
    format: str
    path: Path | None = None
    cap: int | None = None
    required: bool = True
    on_error: str = "fail"  # a bad file in this source: fail the build, or skip it (reported)
    split: str | None = None  # superni: keep only the official train/test split
    seed: int = 0  # synthetic generator seed / FLAN pattern choice
    instances_per_task: int = 200  # synthetic
    num_tasks: int | None = None  # synthetic
    task_per: str = "template"  # promptsource: a task is a template, or a dataset (§4.1)


@dataclass
class HeldOutConfig:
    categories: list[str] = field(default_factory=list)
    level1_datasets: list[str] = field(default_factory=list)  # evaluated as held out (§5.2)
    level2_datasets: list[str] = field(default_factory=list)  # partially held out (Table 15)
    tasks: list[str] = field(default_factory=list)
    tasks_per_category: int = 0
    superni_test_split: bool = False
    instances: float = 0.1
    level3: str = "random"  # or source_splits: the original validation/test rows (§2.3)
    max_eval_instances: int | None = None
    dev_categories: list[str] = field(default_factory=list)  # validation set (Table 15)
    dev_datasets: list[str] = field(default_factory=list)


@dataclass
class LeakageConfig:
    n: int = 13
    threshold: float = 0.5  # unit task: 0.01 unless set (§2.3: "more than 1%")
    action: str = "report"
    unit: str = "instance"  # or task: the paper's rule per (train task, eval task) pair
    superni_excluded: str = "keep"  # or drop: Super-NI's excluded_tasks.txt (§2.3)


@dataclass
class BenchConfig:
    path: Path
    name: str
    seed: int
    tokenizer: str
    max_example_tokens: int
    train_shots: int
    default_cap: int
    sources: list[SourceConfig]
    categories: dict[str, str]
    on_unmapped: str
    aliases: dict[str, str]
    prefer: list[str]
    held_out: HeldOutConfig
    leakage: LeakageConfig
    raw: dict
    templates: TemplateLimits = field(default_factory=TemplateLimits)
    dedup_policy: str = "one_copy"  # or "paper" (§2.1), see consolidate.dedup_datasets
    dedup_drop_from: list[str] = field(default_factory=lambda: list(PAPER_DROP_FROM))
    prompts: PromptConfig = field(default_factory=PromptConfig)  # see prompt_config.py
    superni_options_list: bool = True  # paper (§5.4): False


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise OptimlError(where, f"unknown key(s) {', '.join(unknown)}",
                          f"allowed: {', '.join(sorted(allowed))}")


def _typed(d: dict, key: str, kind, default, where: str):
    value = d.get(key, default)
    if value is None:
        return value
    numeric = kind in (int, float, (int, float))
    if not isinstance(value, kind) or (numeric and isinstance(value, bool)):
        raise OptimlError(f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, "
                          f"got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise OptimlError(f"{where}.{key}", f"{value!r} is not a finite number",
                          "write a finite number")
    return value


def _choice(value: str, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise OptimlError(where, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _source(d: object, i: int, base: Path) -> SourceConfig:
    where = f"sources[{i}]"
    if not isinstance(d, dict):
        raise OptimlError(where, "each source is a mapping with name, format and path")
    _check_keys(d, set(SourceConfig.__dataclass_fields__), where)
    fmt = _choice(_typed(d, "format", str, None, where), SOURCE_FORMATS, f"{where}.format")
    generated = fmt in ("synthetic", "synthetic_mix")  # made by our own code: no path
    name = _typed(d, "name", str, "superni" if generated else None, where)
    if not name:
        raise OptimlError(f"{where}.name", "is missing", "name the benchmark, e.g. superni")
    path = _typed(d, "path", str, None, where)
    if not generated and not path:
        raise OptimlError(f"{where}.path", "is missing", "point it at the local collection")
    if path:
        path = base / _expand(path)
    cap = _typed(d, "cap", int, None, where)
    task_per = _choice(_typed(d, "task_per", str, "template", where), TASK_PER,
                       f"{where}.task_per")
    if "task_per" in d and fmt != "promptsource":
        raise OptimlError(f"{where}.task_per", f"applies to promptsource sources, not {fmt}",
                          "remove it (FLAN tasks are always one per dataset)")
    return SourceConfig(
        name=name, format=fmt, path=Path(path) if path else None, cap=cap,
        required=_typed(d, "required", bool, True, where),
        on_error=_choice(_typed(d, "on_error", str, "fail", where), ("fail", "skip"),
                         f"{where}.on_error"),
        split=_typed(d, "split", str, None, where), seed=_typed(d, "seed", int, 0, where),
        instances_per_task=_typed(d, "instances_per_task", int, 200, where),
        num_tasks=_typed(d, "num_tasks", int, None, where), task_per=task_per)


_VARIABLE = re.compile(r"\$(\w+)|\$\{([^}]*)\}")


def _expand(value: str) -> str:
    return os.path.expandvars(os.path.expanduser(value))


def _check_variables(raw: dict, where: str) -> None:
    """Every `${VAR}` of the tokenizer and the source paths must be set: otherwise the literal
    `${VAR}` would end up in a path and be reported as a missing file."""
    fields = [("tokenizer", raw.get("tokenizer"))]
    fields += [(f"sources[{i}].path", s.get("path")) for i, s in enumerate(raw["sources"])
               if isinstance(s, dict)]
    unset: dict[str, str] = {}
    for key, value in fields:
        for name in (a or b for a, b in _VARIABLE.findall(value if isinstance(value, str) else "")):
            if name not in os.environ:
                unset.setdefault(name, key)
    if unset:
        names = list(unset)
        what = (f"environment variable {names[0]} is not set" if len(names) == 1 else
                f"environment variables {', '.join(names)} are not set")
        raise OptimlError(f"{where}: {unset[names[0]]}", what,
                          "export " + " ".join(f"{n}=..." for n in names)
                          + "; the comment at the top of the file says what each holds")


def _tokenizer_spec(spec: str, base: Path) -> str:
    spec = _expand(spec)
    return spec if spec == "byte" or Path(spec).is_absolute() else str(base / spec)


def _template_limits(raw: dict, where: str) -> TemplateLimits:
    d = _typed(raw, "templates", dict, {}, where) or {}
    w = f"{where}: templates"
    _check_keys(d, {"max_seconds", "max_chars"}, w)
    default = TemplateLimits()
    limits = TemplateLimits(
        max_seconds=float(_typed(d, "max_seconds", (int, float), default.max_seconds, w)),
        max_chars=_typed(d, "max_chars", int, default.max_chars, w))
    if limits.max_seconds <= 0:
        raise OptimlError(f"{w}.max_seconds", "must be positive", "e.g. 1.0")
    if limits.max_chars < 1:
        raise OptimlError(f"{w}.max_chars", "must be at least 1", "e.g. 1000000")
    return limits


def load_bench_config(path: str | Path) -> BenchConfig:
    path = Path(path)
    raw = parse_yaml(read_text(path, "pass the path of a bench YAML (see recipes/bench/)"),
                     str(path))
    if not isinstance(raw, dict):
        raise OptimlError(str(path), "a bench config is a YAML mapping")
    top = {"name", "seed", "tokenizer", "max_example_tokens", "train_shots", "default_cap",
           "sources", "categories", "on_unmapped", "dedup", "held_out", "leakage", "templates",
           "prompts", "superni_options_list"}
    _check_keys(raw, top, str(path))
    where = str(path)
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources:
        raise OptimlError(f"{where}: sources", "needs a non-empty list of sources")
    _check_variables(raw, where)
    categories = _typed(raw, "categories", dict, {}, where) or {}
    dedup = _typed(raw, "dedup", dict, {}, where) or {}
    _check_keys(dedup, {"aliases", "prefer", "policy", "drop_from"}, f"{where}: dedup")
    held = _typed(raw, "held_out", dict, {}, where) or {}
    _check_keys(held, set(HeldOutConfig.__dataclass_fields__), f"{where}: held_out")
    leak = _typed(raw, "leakage", dict, {}, where) or {}
    _check_keys(leak, set(LeakageConfig.__dataclass_fields__), f"{where}: leakage")
    hw = f"{where}: held_out"
    instances = _typed(held, "instances", (int, float), 0.1, hw)
    if instances < 0:
        raise OptimlError(f"{hw}.instances", "must be a fraction in [0, 1) or a count >= 1")
    cfg = BenchConfig(
        path=path, name=_typed(raw, "name", str, path.stem, where),
        seed=_typed(raw, "seed", int, 0, where),
        tokenizer=_tokenizer_spec(_typed(raw, "tokenizer", str, "byte", where), path.parent),
        max_example_tokens=_typed(raw, "max_example_tokens", int, 2046, where),
        train_shots=_typed(raw, "train_shots", int, 0, where),
        default_cap=_typed(raw, "default_cap", int, DEFAULT_CAP, where),
        sources=[_source(s, i, path.parent) for i, s in enumerate(sources)],
        categories={str(k): str(v) for k, v in categories.items()},
        on_unmapped=_choice(_typed(raw, "on_unmapped", str, "fail", where), ("fail", "skip"),
                            f"{where}: on_unmapped"),
        aliases={str(k): str(v) for k, v in (dedup.get("aliases") or {}).items()},
        prefer=[str(p) for p in dedup.get("prefer") or []],
        held_out=HeldOutConfig(
            categories=list(_typed(held, "categories", list, [], hw) or []),
            level1_datasets=[str(d) for d in _typed(held, "level1_datasets", list, [], hw)
                             or []],
            level2_datasets=[str(d) for d in _typed(held, "level2_datasets", list, [], hw)
                             or []],
            tasks=list(_typed(held, "tasks", list, [], hw) or []),
            tasks_per_category=_typed(held, "tasks_per_category", int, 0, hw),
            superni_test_split=_typed(held, "superni_test_split", bool, False, hw),
            instances=instances,
            level3=_choice(_typed(held, "level3", str, "random", hw),
                           ("random", "source_splits"), f"{hw}.level3"),
            max_eval_instances=_typed(held, "max_eval_instances", int, None, hw),
            dev_categories=[str(c) for c in _typed(held, "dev_categories", list, [], hw) or []],
            dev_datasets=[str(d) for d in _typed(held, "dev_datasets", list, [], hw) or []]),
        leakage=LeakageConfig(
            n=_typed(leak, "n", int, 13, f"{where}: leakage"),
            threshold=float(_typed(leak, "threshold", (int, float),
                                   0.01 if leak.get("unit") == "task" else 0.5,
                                   f"{where}: leakage")),
            unit=_choice(_typed(leak, "unit", str, "instance", f"{where}: leakage"),
                         ("instance", "task"), f"{where}: leakage.unit"),
            action=_choice(_typed(leak, "action", str, "report", f"{where}: leakage"),
                           ("report", "drop_train"), f"{where}: leakage.action"),
            superni_excluded=_choice(_typed(leak, "superni_excluded", str, "keep",
                                            f"{where}: leakage"), ("keep", "drop"),
                                     f"{where}: leakage.superni_excluded")),
        raw=raw, templates=_template_limits(raw, where),
        dedup_policy=_choice(_typed(dedup, "policy", str, "one_copy", f"{where}: dedup"),
                             DEDUP_POLICIES, f"{where}: dedup.policy"),
        dedup_drop_from=[str(b) for b in _typed(dedup, "drop_from", list,
                                                 list(PAPER_DROP_FROM), f"{where}: dedup")],
        prompts=parse_prompts(raw.get("prompts"), f"{where}: prompts"),
        superni_options_list=_typed(raw, "superni_options_list", bool, True, where))
    if cfg.max_example_tokens < 2:
        raise OptimlError(f"{where}: max_example_tokens", "must be at least 2")
    return cfg
