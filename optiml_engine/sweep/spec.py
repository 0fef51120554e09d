"""The sweep file: a base recipe, the bench, the evaluation, the seeds and the variants.

```yaml
name: demo-eps                     # default: the file's stem
recipe: ../demo.yaml               # base recipe, relative to this file
bench: ../bench/synthetic.yaml     # a bench YAML (built once under OUT/benches/) or a built bench
overrides: [train.steps=60]        # recipe overrides applied to every run
seeds: [1, 2]                      # every variant runs once per seed (train.seed)
launcher: python                   # or: torchrun --standalone --nproc_per_node 2
baseline: eps-4096                 # the variant deltas are taken against (default: the first)
swept: data.eps_cap                # numeric key on the x axis of the charts (a one-key grid: it)
eval: {shots: [0, 5], max_instances: 10, max_new_tokens: 24, batch_size: 16,
       levels: [heldout_category, heldout_task, heldout_instance]}
variants:                          # each a name and recipe overrides ...
  - {name: eps-128, overrides: [data.eps_cap=128]}
  - {name: shots-5, bench: ../bench/synthetic-5shot.yaml}   # ... and/or its own training bench
grid: {data.eps_cap: [128, 4096]}  # ... or, instead of `variants`, every combination of values
```
Every key is checked and every override validated as a recipe override; a mistake is one
OptimlError naming the file, the field and the fix.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from optiml_engine.config import _yaml_value, parse_override
from optiml_engine.errors import OptimlError, parse_yaml, read_text

TOP_KEYS = ("name", "recipe", "bench", "overrides", "seeds", "launcher", "baseline", "swept",
            "eval", "variants", "grid")
EVAL_KEYS = ("shots", "max_instances", "max_new_tokens", "batch_size", "levels")
LEVELS = ("heldout_category", "heldout_task", "heldout_instance")
VARIANT_KEYS = ("name", "overrides", "bench", "value")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")  # a directory name on every system


@dataclass
class EvalSpec:
    shots: list[int] = field(default_factory=lambda: [0])
    max_instances: int = 100
    max_new_tokens: int = 256
    batch_size: int = 8
    levels: list[str] = field(default_factory=lambda: list(LEVELS))


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    bench: Path | None = None  # its own training bench (YAML or built); None: the sweep's
    value: float | None = None  # its x on the charts: the swept key's value


@dataclass
class SweepSpec:
    path: Path
    name: str
    recipe: Path
    bench: Path
    seeds: list[int]
    variants: list[Variant]
    baseline: str
    overrides: list[str] = field(default_factory=list)
    launcher: list[str] = field(default_factory=lambda: ["python"])
    swept: str | None = None
    eval: EvalSpec = field(default_factory=EvalSpec)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def _fail(where: str, what: str, fix: str) -> OptimlError:
    return OptimlError(where, what, fix)


def _list_of(value, kind, where: str, what: str) -> list:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise _fail(where, f"expected a non-empty list of {what}, got {value!r}",
                    f"write e.g. [{'1, 2' if kind is int else 'a=1'}]")
    return value


def _overrides(value, where: str) -> list[str]:
    """Each override checked as `optiml train` would check it (key, type, choices, range)."""
    if value is None:
        return []
    items = _list_of(value, str, where, "section.key=value strings")
    for text in items:
        parse_override(text, where)
    return items


def _path(value, base: Path, where: str, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected the path of {what}, got {value!r}",
                    "write a path relative to the sweep file")
    path = (base / value).resolve()
    if not path.exists():
        raise _fail(where, f"{value} not found", f"point it at {what}")
    return path


def _eval_spec(raw, where: str) -> EvalSpec:
    if raw is None:
        return EvalSpec()
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mapping, got {raw!r}", "write eval: {shots: [0, 5]}")
    spec = EvalSpec()
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key not in EVAL_KEYS:
            raise _fail(at, "unknown key", f"known keys: {', '.join(EVAL_KEYS)}")
        if key == "shots":
            spec.shots = _list_of(value, int, at, "numbers of demonstrations")
            if any(s < 0 for s in spec.shots) or len(set(spec.shots)) != len(spec.shots):
                raise _fail(at, f"{value!r} has a negative or repeated entry", "write e.g. [0, 5]")
        elif key == "levels":
            spec.levels = _list_of(value, str, at, "levels")
            bad = [lv for lv in spec.levels if lv not in LEVELS]
            if bad:
                raise _fail(at, f"unknown level {bad[0]!r}", f"allowed: {', '.join(LEVELS)}")
        else:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _fail(at, f"expected an integer >= 1, got {value!r}", "write e.g. 10")
            setattr(spec, key, value)
    return spec


def _launcher(value, where: str) -> list[str]:
    words = shlex.split(value) if isinstance(value, str) else []
    if not words or words[0] not in ("python", "torchrun"):
        raise _fail(where, f"{value!r} is not a launcher",
                    "write `python` or `torchrun --standalone --nproc_per_node N`")
    return words


def _grid_variants(raw, where: str) -> tuple[list[Variant], str | None]:
    if not isinstance(raw, dict) or not raw:
        raise _fail(where, f"expected a mapping of key: [values], got {raw!r}",
                    "write grid: {data.eps_cap: [128, 4096]}")
    keys, values = [], []
    for key, options in raw.items():
        at = f"{where}.{key}"
        if not isinstance(options, list) or not options:
            raise _fail(at, f"expected a non-empty list of values, got {options!r}",
                        "write e.g. [128, 4096]")
        for option in options:
            parse_override(f"{key}={_yaml_value(option)}", at)
        keys.append(str(key))
        values.append(options)
    variants = []
    for combo in itertools.product(*values):
        overrides = [f"{k}={_yaml_value(v)}" for k, v in zip(keys, combo, strict=True)]
        name = ",".join(f"{k.split('.')[-1]}={_yaml_value(v)}" for k, v in
                        zip(keys, combo, strict=True))
        value = combo[0] if len(keys) == 1 and _is_number(combo[0]) else None
        variants.append(Variant(name=name, overrides=overrides, value=value))
    return variants, keys[0] if len(keys) == 1 else None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _variant(raw, base: Path, where: str, swept: str | None) -> Variant:
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mapping, got {raw!r}",
                    "write {name: NAME, overrides: [section.key=value]}")
    for key in raw:
        if key not in VARIANT_KEYS:
            raise _fail(f"{where}.{key}", "unknown key", f"known keys: {', '.join(VARIANT_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail(f"{where}.name", f"{name!r} is not a run name",
                    "letters, digits and . _ = , + - (it names a directory)")
    variant = Variant(name=name, overrides=_overrides(raw.get("overrides"), f"{where}.overrides"))
    if raw.get("bench") is not None:
        variant.bench = _path(raw["bench"], base, f"{where}.bench", "a bench YAML or built bench")
    value = raw.get("value")
    if value is not None and not _is_number(value):
        raise _fail(f"{where}.value", f"{value!r} is not a number", "write the swept value")
    if value is None and swept:  # the swept key's value, as the variant overrides it
        for text in variant.overrides:
            key, _, _ = text.partition("=")
            if key.strip() == swept:
                found = parse_override(text, where)[1]
                value = found if _is_number(found) else None
    variant.value = value
    return variant


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (nothing is built or run)."""
    path = Path(path)
    where = str(path)
    raw = parse_yaml(read_text(path, "pass the path of a sweep YAML"), where)
    if not isinstance(raw, dict):
        raise _fail(where, "expected a mapping of sweep keys", "see recipes/ablations/")
    for key in raw:
        if key not in TOP_KEYS:
            raise _fail(f"{where}: {key}", "unknown key", f"known keys: {', '.join(TOP_KEYS)}")
    for key in ("recipe", "bench", "seeds"):
        if key not in raw:
            raise _fail(f"{where}: {key}", "is missing", "every sweep names recipe, bench, seeds")
    base = path.resolve().parent
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail(f"{where}: name", f"{name!r} is not a sweep name", "letters, digits, . _ -")
    seeds = _list_of(raw["seeds"], int, f"{where}: seeds", "integer seeds")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise _fail(f"{where}: seeds", f"{seeds} has a negative or repeated seed",
                    "write distinct seeds >= 0")
    swept = raw.get("swept")
    if swept is not None:
        if not isinstance(swept, str) or "." not in swept:
            raise _fail(f"{where}: swept", f"{swept!r} is not a recipe key",
                        "write section.key, e.g. data.eps_cap")
    if ("variants" in raw) == ("grid" in raw):
        raise _fail(f"{where}: variants", "give either `variants` or `grid` (exactly one)",
                    "list named variants, or a grid of key: [values]")
    if "grid" in raw:
        variants, grid_key = _grid_variants(raw["grid"], f"{where}: grid")
        swept = swept or grid_key
    else:
        items = raw["variants"]
        if not isinstance(items, list) or not items:
            raise _fail(f"{where}: variants", "expected a non-empty list",
                        "write - {name: NAME, overrides: [...]}")
        variants = [_variant(v, base, f"{where}: variants[{i}]", swept)
                    for i, v in enumerate(items)]
    names = [v.name for v in variants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _fail(f"{where}: variants", f"name {twice[0]!r} is used twice", "rename one")
    baseline = raw.get("baseline", names[0])
    if baseline not in names:
        raise _fail(f"{where}: baseline", f"{baseline!r} is not a variant",
                    f"choose one of {', '.join(names)}")
    return SweepSpec(
        path=path.resolve(), name=name,
        recipe=_path(raw["recipe"], base, f"{where}: recipe", "a YAML recipe"),
        bench=_path(raw["bench"], base, f"{where}: bench", "a bench YAML or a built bench"),
        seeds=seeds, variants=variants, baseline=baseline,
        overrides=_overrides(raw.get("overrides"), f"{where}: overrides"),
        launcher=_launcher(raw.get("launcher", "python"), f"{where}: launcher"),
        swept=swept, eval=_eval_spec(raw.get("eval"), f"{where}: eval"))
