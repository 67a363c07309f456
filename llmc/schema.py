"""Checking the JSON files llmc reads back (an artifact's report.json and weights.json).

A schema is a dict of field name -> `Field`; `validate` raises one `LlmcError` line naming
the file and the (dotted) field, so a tampered or hand-edited file never surfaces as a
KeyError or TypeError deep inside a command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from llmc.compiler.errors import LlmcError

# a check returns what is wrong with a value ("must be ..."), or None when it is fine
Check = Callable[[object], "str | None"]


@dataclass(frozen=True)
class Field:
    """One field: its check, and whether it may be absent (or null)."""

    check: Check
    required: bool = True


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value),
                                                                         type(value).__name__)


def is_str(value) -> str | None:
    return None if isinstance(value, str) else f"must be a string, not {_kind(value)}"


def is_bool(value) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, not {_kind(value)}"


def is_int(value) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return None if ok else f"must be an integer, not {_kind(value)}"


def is_positive_int(value) -> str | None:
    if (problem := is_int(value)) is not None:
        return problem
    return None if value > 0 else f"must be positive, not {value}"


def is_int_list(value) -> str | None:
    if not isinstance(value, list) or any(is_int(v) for v in value):
        return f"must be a list of integers, not {_kind(value)}"
    return None


def is_int_or_int_list(value) -> str | None:
    if is_int(value) is None or is_int_list(value) is None:
        return None
    return f"must be an integer or a list of integers, not {_kind(value)}"


def one_of(*choices: str) -> Check:
    """The value is one of these strings."""
    def check(value) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}, not {value!r}"
    return check


def is_object(value) -> str | None:
    return None if isinstance(value, dict) else f"must be an object, not {_kind(value)}"


def validate(doc, file: str | Path, schema: Mapping[str, Field], where: str = "") -> None:
    """Check `doc` (parsed from `file`) against `schema`; raise on the first problem."""
    if not isinstance(doc, dict):
        what = f"field '{where.rstrip('.')}'" if where else "the top level"
        raise LlmcError(f"{file}: {what} must be a JSON object, not {_kind(doc)}")
    for name, spec in schema.items():
        value = doc.get(name)
        if value is None:
            if spec.required:
                raise LlmcError(f"{file}: field '{where}{name}' is missing")
            continue
        problem = spec.check(value)
        if problem is not None:
            raise LlmcError(f"{file}: field '{where}{name}' {problem}")


def validate_each(doc: Mapping, file: str | Path, schema: Mapping[str, Field],
                  where: str) -> None:
    """Check every value of the object `doc` (field `where`) against `schema`."""
    for key, value in doc.items():
        validate(value, file, schema, f"{where}.{key}.")
