"""User mistakes as one line: what is wrong and what to do, never a traceback or a pydantic link.

Exit status 2 for a mistake in what was asked (a bad option, a missing store, model or batch),
1 for work that failed on valid input. ``GALAXY_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError

USAGE = 2
FAILED = 1


class UserError(typer.TyperException):
    """A mistake in what the user asked for; the message says what is wrong and what to do."""

    exit_code = USAGE


class Failed(typer.TyperException):
    """Valid input, but the work failed (e.g. torchrun exited with an error)."""

    exit_code = FAILED


def one_line(text: str) -> str:
    """The first line of ``text``, saying if more was cut."""
    first, _, rest = text.strip().partition("\n")
    return f"{first} (+{rest.count(chr(10)) + 1} more lines)" if rest.strip() else first


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def describe_validation(error: ValidationError) -> str:
    """Every problem pydantic found, in one line: which setting, the value given, and what it accepts."""
    problems = []
    for item in error.errors(include_url=False):
        field, given, kind = _field(item["loc"]), item.get("input"), item["type"]
        message = str(item["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if kind in ("literal_error", "enum"):
            problems.append(f"{field} {given!r} is not one of {item['ctx']['expected']}")
        elif kind == "extra_forbidden":
            problems.append(f"unknown setting {field!r}")
        elif kind == "missing":
            problems.append(f"{field} is required")
        elif field and kind != "value_error":
            problems.append(f"invalid {field} {given!r}: {message[:1].lower()}{message[1:]}")
        elif field:
            problems.append(f"{field}: {message}")
        else:
            problems.append(message)
    return "; ".join(problems)
