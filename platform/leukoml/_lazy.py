"""Lazy re-exports for a package's `__init__` (PEP 562, as scipy and Optuna do).

`import leukoml.data.spec` runs `leukoml/data/__init__.py` first; if that
imported pandas, scikit-learn or MLflow, every command would pay for them
before it could check its input. A package lists its public names by
submodule; each submodule is imported when one of its names is first used.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]):
    """(`__getattr__`, `__all__`) for `package`: `exports` maps a module (relative to
    `package`, or absolute) to the names it provides."""
    where = {name: module for module, found in exports.items() for name in found}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], package), name)

    return __getattr__, sorted(where)
