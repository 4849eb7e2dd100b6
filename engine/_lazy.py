"""Lazy public names for a package `__init__` (PEP 562), so light imports stay light."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return the module-level ``__getattr__`` and ``__dir__`` that load names on first use.

    Args:
        package: The package's name, for error messages.
        exports: Public name -> the module that defines it.
        namespace: The package's ``globals()``; a loaded name is cached there.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
