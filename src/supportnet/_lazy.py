"""Public names imported on first use (PEP 562), for ``supportnet`` and ``supportnet.theory``.

Importing torch takes 1-2 s; the command line's cheap commands (``supportnet models``,
``--version``, ``--help``) must not pay it, so the packages bind their names lazily.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Collection, Mapping


def lazy_names(package: str, exports: Mapping[str, str], submodules: Collection[str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: each name of ``exports`` (name -> the
    submodule that defines it) is imported on first use and then bound on the package; each of
    ``submodules`` resolves as an attribute, as the eager imports used to bind them. Any other
    name is an ``AttributeError`` (so ``hasattr`` never imports, nor raises)."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            if name not in submodules:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        vars(sys.modules[package])[name] = value
        return value

    def __dir__() -> list[str]:
        bound = {n for n in vars(sys.modules[package]) if not n.startswith("_") and n != "TYPE_CHECKING"}
        return sorted(bound | set(exports) | set(submodules) | {"__version__"} & set(vars(sys.modules[package])))

    return __getattr__, __dir__
