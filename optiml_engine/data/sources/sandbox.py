"""Rendering untrusted templates: PromptSource Jinja and FLAN `str.format` patterns.

Both may come from files a user downloaded, so neither may reach anything but the record:
- Jinja renders in `ImmutableSandboxedEnvironment` (no mutation, no private or dunder attributes)
  with no globals and `StrictUndefined`, and attribute access is allowed only on plain data
  (strings, numbers, lists, dicts): a template naming a variable outside its record, or reaching for
  an attribute of anything else, is refused.
- FLAN patterns may name record fields only: `{field}`; `{0.__class__}`, `{a[0]}` are refused.

Nor may either exhaust the machine (`TemplateLimits`, the bench config's `templates` section):
- each render has a CPU-time budget (`max_seconds`), enforced by a CPU-time timer in the main
  thread and checked at every operator, call and filter in any thread;
- each rendered output, and every value built on the way, holds at most `max_chars` characters;
- what could blow past these in one uninterruptible step is refused before it runs: an integer
  power or product beyond `MAX_INT_BITS` bits (`9**(9**8)`), a repeat (`'x' * 10**9`), a
  concatenation, a `replace`/`join` whose result would exceed `max_chars`, and a width or
  precision above `max_chars` in a format spec (`{text:>999999999}`, `'%999999999s'`),
  `center`/`indent`/`batch`/`slice` or a string method (`ljust`, `zfill`, ...).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import string

from jinja2 import StrictUndefined, TemplateError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .template_limits import (
    DEFAULT_LIMITS,
    MAX_INT_BITS,
    Budget,
    TemplateLimitExceeded,
    TemplateLimits,
    TemplateRefused,
    current_budget,
    run_within,
    size_of,
)

__all__ = ["DEFAULT_LIMITS", "TemplateLimitExceeded", "TemplateLimits", "TemplateRefused",
           "check_format_pattern", "pattern_fields", "render_jinja", "render_pattern"]

PLAIN_TYPES = (str, int, float, bool, list, tuple, dict, type(None))


# --------------------------------------------------------------------------------------------
# Jinja

_PRINTF_NUMBERS = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d+|\*)?(?:\.(\d+|\*))?")
_WIDTH_FILTERS = {"center": ("width",), "indent": ("width",), "batch": ("linecount",),
                  "slice": ("slices",), "wordwrap": ("width",)}
_WIDTH_METHODS = {"ljust", "rjust", "center", "zfill", "expandtabs", "to_bytes"}


def _check_printf(budget: Budget, fmt: str, args) -> None:
    """Widths and precisions of a `%` format (`'%999999999s'`, or `*` taken from the args)."""
    for width, precision in _PRINTF_NUMBERS.findall(fmt):
        for n in (width, precision):
            if n.isdigit():
                budget.number(int(n), "format width")
            elif n == "*":
                for arg in args if isinstance(args, tuple | list) else (args,):
                    budget.number(arg, "format width")


def _replace_size(s: str, old: str, new: str, count=None) -> int:
    hits = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * (len(new) - len(old))


class RecordOnlyEnvironment(ImmutableSandboxedEnvironment):
    """A sandbox that exposes the record's plain data and nothing else, within a budget."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def is_safe_attribute(self, obj, attr, value) -> bool:
        if not isinstance(obj, PLAIN_TYPES) or attr.startswith("_"):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context, operator, left, right):
        budget = current_budget()
        if budget is not None:
            _check_binop(budget, operator, left, right)
        result = super().call_binop(context, operator, left, right)
        return budget.check(result, f"the result of {operator}") if budget else result

    def call(__self, __context, __obj, *args, **kwargs):  # jinja's own signature
        budget = current_budget()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "a call")
        if budget is not None and isinstance(owner, str | int) and not isinstance(owner, bool):
            kind = f"{type(owner).__name__}.{name}"
            if name in _WIDTH_METHODS:
                for arg in (*args, *kwargs.values()):
                    budget.number(arg, f"an argument of {kind}:")
            if name == "expandtabs" and isinstance(owner, str):
                tab = (args or [kwargs.get("tabsize", 8)])[0]
                if isinstance(tab, int):
                    budget.chars(len(owner) + owner.count("\t") * tab, kind)
            if name == "replace" and isinstance(owner, str) and len(args) >= 2 and all(
                    isinstance(a, str) for a in args[:2]):
                budget.chars(_replace_size(owner, *args[:3]), kind)
            if name == "join" and isinstance(owner, str) and args and isinstance(
                    args[0], list | tuple):
                budget.chars(size_of(args[0], budget.limits.max_chars)
                             + len(owner) * len(args[0]), kind)
        result = super().call(__context, __obj, *args, **kwargs)
        return budget.check(result, f"the result of {name}") if budget else result

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        budget = current_budget()
        if wrapped is not None and budget is not None:
            check_format_pattern(value.__self__, budget.limits)
        return wrapped

    @staticmethod
    def concat(parts) -> str:
        """`"".join` of a block's output (`{% set %}` blocks, macros), counted as it grows."""
        budget = current_budget()
        if budget is None:
            return "".join(parts)
        out, n = [], 0
        for part in parts:
            n += len(part)
            budget.chars(n, "a block's output")
            out.append(part)
        return "".join(out)


def _check_binop(budget: Budget, op: str, left, right) -> None:
    cap = budget.limits.max_chars
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (left, right))
    if op == "**" and ints and right > 0 and abs(left) > 1:
        bits = int(right * math.log2(abs(left)))
        if bits > MAX_INT_BITS:
            raise TemplateLimitExceeded(f"{left} ** {right} has about {bits} bits, above the "
                                        f"{MAX_INT_BITS} allowed", None)
    elif op == "*" and ints:
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateLimitExceeded(f"a product of more than {MAX_INT_BITS} bits", None)
    elif op == "*":
        seq, times = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(times, int) and isinstance(seq, str | list | tuple) and times > 0:
            budget.chars(size_of(seq, cap) * times, f"a repeat {type(seq).__name__} * {times}")
    elif op == "+" and isinstance(left, str | list | tuple):
        budget.chars(size_of(left, cap) + size_of(right, cap), "a concatenation")
    elif op == "%" and isinstance(left, str):
        _check_printf(budget, left, right)


def _bounded_filter(name: str, func):
    params = inspect.signature(func).parameters
    checked = name in _WIDTH_FILTERS or name in ("replace", "join", "format")

    @functools.wraps(func)  # keeps jinja's pass_context / pass_eval_context marks
    def bounded(*args, **kwargs):
        budget = current_budget()
        if budget is None:
            return func(*args, **kwargs)
        if checked:
            bound = inspect.Signature(list(params.values())).bind_partial(*args, **kwargs)
            a = bound.arguments
            for key in _WIDTH_FILTERS.get(name, ()):
                budget.number(a.get(key), f"the {key} of filter {name}:")
            if name == "indent" and isinstance(a.get("s"), str):
                w = a.get("width", 4)
                lines = a["s"].count("\n") + 1
                budget.chars(len(a["s"]) + lines * (len(w) if isinstance(w, str) else w),
                             "filter indent")
            if name == "replace" and all(isinstance(a.get(k), str) for k in ("s", "old", "new")):
                budget.chars(_replace_size(a["s"], a["old"], a["new"], a.get("count")),
                             "filter replace")
            if name == "join" and isinstance(a.get("value"), list | tuple):
                sep = a.get("d", "")
                budget.chars(size_of(a["value"], budget.limits.max_chars)
                             + len(sep) * len(a["value"]), "filter join")
            if name == "format" and isinstance(a.get("value"), str):
                _check_printf(budget, a["value"], a.get("args", ()))
        return budget.check(func(*args, **kwargs), f"filter {name}")

    return bounded


_ENV = RecordOnlyEnvironment(undefined=StrictUndefined, autoescape=False,
                             keep_trailing_newline=True)
_ENV.globals.clear()
_ENV.filters = {name: _bounded_filter(name, f) for name, f in _ENV.filters.items()}


def _bounded_str_join(seq) -> str:
    """`a ~ b` in a compiled template."""
    return RecordOnlyEnvironment.concat([str(x) for x in seq])


@functools.lru_cache(maxsize=1024)
def _compile(source: str):
    template = _ENV.from_string(source)
    # `~` compiles to the module-level `str_join` of jinja's runtime: count it too.
    template.root_render_func.__globals__["str_join"] = _bounded_str_join
    return template


def render_jinja(source: str, variables: dict, limits: TemplateLimits = DEFAULT_LIMITS) -> str:
    def render() -> str:
        out, n = [], 0
        for chunk in _compile(source).generate(**variables):
            n += len(chunk)
            if n > limits.max_chars:
                raise TemplateLimitExceeded(f"output would exceed {limits.max_chars} characters",
                                            "max_chars")
            out.append(chunk)
        return "".join(out)

    try:
        return run_within(limits, render)
    except TemplateRefused:
        raise
    except SecurityError as err:
        raise TemplateRefused(f"template reaches outside its record: {err}") from err
    except UndefinedError as err:
        raise TemplateRefused(f"template needs a field the record lacks: {err}") from err
    except RecursionError as err:
        raise TemplateRefused("template recurses too deeply") from err
    except MemoryError as err:
        raise TemplateRefused("template ran out of memory") from err
    except (TemplateError, TypeError, ValueError, LookupError, ArithmeticError) as err:
        raise TemplateRefused(f"template failed to render: {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------------------------
# FLAN patterns

def check_format_pattern(pattern: str, limits: TemplateLimits = DEFAULT_LIMITS) -> list:
    """`string.Formatter().parse(pattern)`, refusing nested fields in a format spec (the record
    would choose the width) and widths or precisions above `limits.max_chars`."""
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as err:
        raise TemplateRefused(f"malformed pattern {pattern!r}: {err}") from err
    for _, field, spec, _ in parsed:
        if field is None or not spec:
            continue
        if "{" in spec:
            raise TemplateRefused(f"pattern field {{{field}:{spec}}} takes its format from a "
                                  "field; write the width as a number")
        for number in re.findall(r"\d+", spec):
            if int(number) > limits.max_chars:
                raise TemplateLimitExceeded(
                    f"pattern field {{{field}:{spec}}} asks for width {int(number)}, above the "
                    f"{limits.max_chars} characters allowed", "max_chars")
    return parsed


def pattern_fields(pattern: str, limits: TemplateLimits = DEFAULT_LIMITS) -> list[str]:
    """Field names a FLAN pattern uses; refuses attribute, index and positional access, and
    format specs beyond the limits."""
    names = []
    for _, field, _, _ in check_format_pattern(pattern, limits):
        if field is None:
            continue
        if not field.isidentifier():
            raise TemplateRefused(f"pattern field {{{field}}} is not a plain record field name")
        names.append(field)
    return names


def render_pattern(pattern: str, values: dict, limits: TemplateLimits = DEFAULT_LIMITS) -> str:
    missing = [f for f in pattern_fields(pattern, limits) if f not in values]
    if missing:
        raise TemplateRefused(f"pattern needs field(s) the record lacks: {', '.join(missing)}")
    try:
        text = pattern.format_map(values)
    except (ValueError, TypeError) as err:  # e.g. {n:d} given a string
        raise TemplateRefused(f"pattern failed to render: {err}") from err
    if len(text) > limits.max_chars:
        raise TemplateLimitExceeded(f"output of {len(text)} characters, above the "
                                    f"{limits.max_chars} allowed", "max_chars")
    return text
