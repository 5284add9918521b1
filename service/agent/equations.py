"""A conversation flow's equations (``left operator right`` over ``{{variables}}``), evaluated without the model.

Both sides are rendered with the chat's values (``variables.render``). ``exists`` holds when every variable the
left side names is set to a non-empty value; ``not_exist`` when one is not. ``==``, ``!=`` and the orderings
compare numbers when both sides read as finite numbers; otherwise ``==`` and ``!=`` compare the texts (spaces at
either end trimmed, case kept) and an ordering is false. ``contains`` and ``not_contains`` look for the right side
in the left, ignoring case. Equations join with ``&&`` (all hold) or ``||`` (any holds).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence

from service.agent.variables import render
from service.retell.flows import Equation

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_ORDER: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def holds(equations: Sequence[Equation], join: str, values: Mapping[str, str]) -> bool:
    """Whether ``equations`` hold together: all of them (``&&``) or any (``||``)."""
    results = (evaluate(equation, values) for equation in equations)
    return any(results) if join == "||" else all(results)


def evaluate(equation: Equation, values: Mapping[str, str]) -> bool:
    """Whether one equation holds over ``values``."""
    if equation.operator in ("exists", "not_exist"):
        names = [match.group(1) for match in _PLACEHOLDER.finditer(equation.left)]
        is_set = bool(names) and all((values.get(name) or "").strip() for name in names)
        return is_set if equation.operator == "exists" else not is_set
    left = render(equation.left, values).strip()
    right = render(equation.right or "", values).strip()
    if equation.operator == "contains":
        return right.casefold() in left.casefold()
    if equation.operator == "not_contains":
        return right.casefold() not in left.casefold()
    numbers = _number(left), _number(right)
    if equation.operator in ("==", "!="):
        same = numbers[0] == numbers[1] if None not in numbers else left == right
        return same if equation.operator == "==" else not same
    a, b = numbers
    return a is not None and b is not None and _ORDER[equation.operator](a, b)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
