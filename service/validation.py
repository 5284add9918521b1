"""Turning pydantic's validation errors into one line per problem that says what was expected."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class Problems(ValueError):
    """What a model validator found wrong, several at once (a conversation flow's graph): ``describe`` gives each
    its own line, under the field the validator checked."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def describe(exc: ValidationError, prefix: str = "", data: Any = None) -> list[str]:
    """``<prefix><field path>: <message> (got <value>)`` for each error. Given the ``data`` validated, an item of a
    list that has an ``id`` (a conversation flow's node, an edge) is named with it: ``nodes.3 (ask_name)``."""
    lines = []
    for err in exc.errors(include_url=False):
        field = _path(err["loc"], data)
        found = (err.get("ctx") or {}).get("error")
        if isinstance(found, Problems):
            lines += [f"{prefix}{field}.{problem}" if field else f"{prefix}{problem}" for problem in found.problems]
            continue
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or err["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{prefix}{field or '(top level)'}: {err['msg']}{shown}")
    return lines


def _path(loc: tuple[int | str, ...], data: Any) -> str:
    parts: list[str] = []
    named = False   # the last part is a list item named by its id
    for part in loc:
        if isinstance(data, dict) and part not in data and data.get("type") == part:
            if not named:   # a union's tag (the item's type): the same item; one named by its id needs no tag
                parts.append(str(part))
            named = False
            continue
        data = _item(data, part)
        known = data.get("id") if isinstance(data, dict) and isinstance(part, int) else None
        named = isinstance(known, str) and bool(known)
        parts.append(f"{part} ({known})" if named else str(part))
    return ".".join(parts)


def _item(data: Any, part: int | str) -> Any:
    """What ``part`` of the loc addresses in ``data`` (None once it cannot be followed)."""
    if isinstance(data, dict):
        return data.get(part)
    if isinstance(data, list) and isinstance(part, int) and -len(data) <= part < len(data):
        return data[part]
    return None
