"""A conversation flow's equations, evaluated by Parley without the model (``service.agent.equations``)."""

from __future__ import annotations

import pytest

from service.agent.equations import evaluate, holds
from service.retell.flows import Equation

VALUES = {"age": "42", "name": "Ana Lopez", "tier": "Gold", "empty": "", "blank": "  ", "price": "9.50",
          "code": "007", "note": "{{age}}"}


@pytest.mark.parametrize(("left", "operator", "right", "expected"), [
    ("{{age}}", "==", "42", True),
    ("{{age}}", "==", "42.0", True),          # both numbers: compared as numbers
    ("{{code}}", "==", "7", True),
    ("{{age}}", "!=", "41", True),
    ("{{age}}", "!=", "42", False),
    ("{{tier}}", "==", "Gold", True),
    ("{{tier}}", "==", "gold", False),        # texts: case kept
    ("{{tier}}", "!=", "gold", True),
    (" {{tier}} ", "==", "Gold", True),       # ends trimmed
    ("{{age}}", ">", "18", True),
    ("{{age}}", ">", "42", False),
    ("{{age}}", ">=", "42", True),
    ("{{age}}", "<", "100", True),
    ("{{age}}", "<=", "41.9", False),
    ("{{price}}", "<", "10", True),
    ("{{age}}", ">", "9", True),              # numbers, not texts ("42" < "9" as text)
    ("{{tier}}", ">", "A", False),            # an ordering needs two numbers
    ("{{missing}}", ">", "1", False),
    ("{{age}}", ">", "nan", False),           # not a finite number
    ("{{name}}", "contains", "lopez", True),  # case ignored
    ("{{name}}", "contains", "Smith", False),
    ("{{name}}", "not_contains", "Smith", True),
    ("{{name}}", "not_contains", "ANA", False),
    ("{{age}}", "==", "{{age}}", True),       # both sides rendered
    ("{{missing}}", "==", "{{missing}}", True),
    ("{{note}}", "==", "{{age}}", False),     # a value is not rendered again
])
def test_comparisons(left: str, operator: str, right: str, expected: bool) -> None:
    assert evaluate(Equation.model_validate({"left": left, "operator": operator, "right": right}), VALUES) is expected


@pytest.mark.parametrize(("left", "exists"), [
    ("{{age}}", True), ("{{ age }}", True), ("{{missing}}", False), ("{{empty}}", False), ("{{blank}}", False),
    ("{{age}} and {{missing}}", False), ("{{age}}/{{name}}", True),
])
def test_exists_and_not_exist(left: str, exists: bool) -> None:
    assert evaluate(Equation(left=left, operator="exists"), VALUES) is exists
    assert evaluate(Equation(left=left, operator="not_exist"), VALUES) is not exists


@pytest.mark.parametrize(("join", "results", "expected"), [
    ("&&", [True, True], True), ("&&", [True, False], False), ("||", [False, True], True),
    ("||", [False, False], False), ("&&", [True], True), ("||", [False], False),
])
def test_all_or_any(join: str, results: list[bool], expected: bool) -> None:
    equations = [Equation(left="{{age}}", operator="==", right="42" if result else "0") for result in results]
    assert holds(equations, join, VALUES) is expected


def test_equations_that_cannot_be_evaluated_are_refused_when_written() -> None:
    with pytest.raises(ValueError, match="needs a right side"):
        Equation(left="{{age}}", operator=">")
    with pytest.raises(ValueError, match="left must be a"):
        Equation(left="age", operator="exists")
    with pytest.raises(ValueError, match="unbalanced or empty"):
        Equation(left="{{age}", operator="==", right="1")
