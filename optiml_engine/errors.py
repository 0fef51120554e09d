"""Errors a user can cause. The CLI prints them as one line and exits with code 2.

Every file the engine reads from a user (recipes, task files, bench configs, HF configs, built
benches) goes through `read_text` / `parse_json` / `read_json` / `parse_yaml` here, so that a
missing, unreadable, non-UTF-8, truncated or absurdly nested file is one `OptimlError` naming the
file (and line), never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path


class OptimlError(Exception):
    """A mistake in a user's input: a recipe, a task file, a checkpoint path.

    `where` names the file (and record or key), `what` says what is wrong, `fix` says what to do.
    """

    exit_code = 2

    def __init__(self, where: str, what: str, fix: str | None = None):
        self.where, self.what, self.fix = where, what, fix
        message = f"{where}: {what}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class Diverged(OptimlError):
    """The run diverged (inf/NaN losses or gradients): one line, but exit code 1, since the
    inputs were valid and the run itself failed."""

    exit_code = 1


def read_text(path: str | Path, fix: str | None = "check the path") -> str:
    """The UTF-8 text of a file; any reason it cannot be read is one OptimlError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OptimlError(str(path), "file not found", fix) from None
    except IsADirectoryError:
        raise OptimlError(str(path), "is a directory, not a file", fix) from None
    except PermissionError:
        raise OptimlError(str(path), "permission denied", "make it readable") from None
    except OSError as err:
        raise OptimlError(str(path), f"cannot read the file ({err.strerror or err})",
                          fix) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise OptimlError(f"{path}:{line}",
                          f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})",
                          "save the file as UTF-8") from None


def parse_json(text: str, where: str, fix: str | None = None, line: int | None = None) -> object:
    """`json.loads` whose failures (syntax, truncation, nesting, huge numbers) name `where` and
    the line: `line` for one line of a JSONL file, else the line the parser stopped at."""
    at = f"{where}:{line}" if line is not None else where
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:  # a string running to the end: cut off inside it
        cut = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")
        at = at if line is not None else f"{where}:{err.lineno}"
        raise OptimlError(at, f"{'truncated' if cut else 'invalid'} JSON "
                          f"({err.msg.removesuffix(' at')} at column {err.colno})", fix) from None
    except RecursionError:
        raise OptimlError(at, "JSON nested too deeply to read", fix) from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise OptimlError(at, f"invalid JSON ({err})", fix) from None


def read_json(path: str | Path, fix: str | None = None) -> object:
    return parse_json(read_text(path), str(path), fix)


def parse_yaml(text: str, where: str, loader=None, fix: str | None = "fix the YAML syntax"):
    """`yaml.load` (safe by default) whose failures name `where` and the line."""
    import yaml

    try:
        return yaml.load(text, Loader=loader or yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise OptimlError(f"{where}{at}", f"invalid YAML ({problem})", fix) from None
    except RecursionError:
        raise OptimlError(where, "YAML nested too deeply to read", fix) from None

