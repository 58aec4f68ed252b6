"""Lazy package exports: a package names its public objects in a table and imports each on first access.

Why: a package `__init__` that imports its modules makes every `import aepo_trainer.x.y` import all of `x` (torch,
FastAPI, ...) and turns the package into an edge of the import graph; a table keeps `aepo --help` cheap and the
graph honest (tests/test_layout.py).
"""

from __future__ import annotations

import importlib

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, exports: dict[str, str]):
    """A module `__getattr__` for `package` that imports `exports[name]` (a module path) and returns its `name`."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
