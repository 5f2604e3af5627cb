"""Names a package exports without importing them: resolved from their module on first use.

``import fstransport`` must stay cheap (no aiohttp, fsspec, botocore, ...), yet every public
name stays importable from the package as before.  A package lists its heavy names in a table
(name → module) and hands it to `lazy_exports`, which returns the module-level ``__getattr__``
and ``__dir__`` (PEP 562).  The package also imports the same names under ``TYPE_CHECKING``,
so type checkers see real types, not ``Any``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the module whose ``globals()`` is `namespace`.

    A name of `table` is imported from its module on first access and then stored in
    `namespace`, so later lookups are plain global lookups.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
