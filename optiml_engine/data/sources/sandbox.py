"""Rendering untrusted templates: PromptSource Jinja and FLAN `str.format` patterns.

Both may come from files a user downloaded, so neither may reach anything but the record:
- Jinja renders in `ImmutableSandboxedEnvironment` (no mutation, no private or dunder attributes)
  with no globals and `StrictUndefined`, and attribute access is allowed only on plain data
  (strings, numbers, lists, dicts): a template naming a variable outside its record, or reaching for
  an attribute of anything else, is refused.
- FLAN patterns may name record fields only: `{field}`; `{0.__class__}`, `{a[0]}` are refused.
"""

from __future__ import annotations

import string

from jinja2 import StrictUndefined, TemplateError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

PLAIN_TYPES = (str, int, float, bool, list, tuple, dict, type(None))


class RecordOnlyEnvironment(ImmutableSandboxedEnvironment):
    """A sandbox that exposes the record's plain data and nothing else."""

    def is_safe_attribute(self, obj, attr, value) -> bool:
        if not isinstance(obj, PLAIN_TYPES) or attr.startswith("_"):
            return False
        return super().is_safe_attribute(obj, attr, value)


_ENV = RecordOnlyEnvironment(undefined=StrictUndefined, autoescape=False,
                             keep_trailing_newline=True)
_ENV.globals.clear()


class TemplateRefused(Exception):
    """The template failed to render or reached outside its record."""


def render_jinja(source: str, variables: dict) -> str:
    try:
        return _ENV.from_string(source).render(**variables)
    except SecurityError as err:
        raise TemplateRefused(f"template reaches outside its record: {err}") from err
    except UndefinedError as err:
        raise TemplateRefused(f"template needs a field the record lacks: {err}") from err
    except (TemplateError, TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as err:
        raise TemplateRefused(f"template failed to render: {type(err).__name__}: {err}") from err


def pattern_fields(pattern: str) -> list[str]:
    """Field names a FLAN pattern uses; refuses attribute, index and positional access."""
    names = []
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as err:
        raise TemplateRefused(f"malformed pattern {pattern!r}: {err}") from err
    for _, field, _, _ in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise TemplateRefused(f"pattern field {{{field}}} is not a plain record field name")
        names.append(field)
    return names


def render_pattern(pattern: str, values: dict) -> str:
    missing = [f for f in pattern_fields(pattern) if f not in values]
    if missing:
        raise TemplateRefused(f"pattern needs field(s) the record lacks: {', '.join(missing)}")
    return pattern.format_map(values)
