"""The size rule of the layout (issue #12): no module in `fstransport/` over 400 lines and no
class over 250, so that each concern keeps its own room (docs/concepts.md has the map)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fstransport

PACKAGE = Path(fstransport.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def test_the_package_is_where_the_modules_are() -> None:
    assert len(MODULES) > 50, PACKAGE


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_or_class_is_over_its_size(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines"
    too_big = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ClassDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
    ]
    assert too_big == []
