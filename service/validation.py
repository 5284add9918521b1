"""Turning pydantic's validation errors into one line per problem that says what was expected."""

from __future__ import annotations

from pydantic import ValidationError


def describe(exc: ValidationError, prefix: str = "") -> list[str]:
    """``<prefix><field path>: <message> (got <value>)`` for each error."""
    lines = []
    for err in exc.errors(include_url=False, include_context=False):
        field = ".".join(str(part) for part in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or err["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{prefix}{field}: {err['msg']}{shown}")
    return lines
