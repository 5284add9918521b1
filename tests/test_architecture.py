"""The code documents itself: every module says what it holds, and nothing points outside the repository."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted((ROOT / "service").rglob("*.py"))


def test_every_module_has_a_docstring() -> None:
    missing = [str(p.relative_to(ROOT)) for p in MODULES if not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


def test_nothing_cites_a_document_outside_the_repository() -> None:
    texts = {p: p.read_text() for p in [*MODULES, ROOT / "README.md", ROOT / "docs" / "architecture.md"]}
    citing = [str(p.relative_to(ROOT)) for p, text in texts.items() if "DESIGN.md" in text or "../shared" in text]
    assert citing == []


def test_the_architecture_document_names_every_package() -> None:
    document = (ROOT / "docs" / "architecture.md").read_text()
    packages = sorted(p.parent.relative_to(ROOT / "service") for p in (ROOT / "service").rglob("__init__.py"))
    unnamed = [str(p) for p in packages if str(p) != "." and f"{p}/" not in document and f"service.{p}" not in document]
    assert unnamed == []
