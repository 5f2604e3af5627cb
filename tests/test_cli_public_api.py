"""The command line uses only public API: no private names of other modules, no private
attributes of other objects (s3fs's ``_call_s3``/``_cat_file``, ``storage._aio``, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fstransport.cli

CLI = Path(fstransport.cli.__file__).parent
ALLOWED_MODULES = {"fstransport._version"}
"""``--version`` reads the version from the one module that holds it without importing the
package's messages (start-up time; see `fstransport.cli.main`)."""


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def leaks(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ALLOWED_MODULES:
                continue
            if any(private(part) for part in node.module.split(".")):
                found.append(f"line {node.lineno}: module {node.module}")
            found += [f"line {node.lineno}: {a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: {a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"line {node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_the_cli_uses_no_private_names_of_others(path: Path) -> None:
    assert leaks(path.read_text()) == []


def test_the_check_finds_private_use() -> None:
    code = (
        "from fstransport.storage import _aio\n"
        "from fstransport.http.runner import _Private\n"
        "async def f(fs, self):\n"
        "    await fs._call_s3('create_bucket')\n"
        "    self._ok = fs.__class__\n"
    )
    assert len(leaks(code)) == 3
