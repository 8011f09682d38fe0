"""Build the API reference with pdoc: ``make docs`` runs it.

    python scripts/build_api_docs.py OUT_DIR MODULE [MODULE ...]

``supportnet`` and ``supportnet.theory`` import their public names on first use (PEP 562);
pdoc reads a name of ``__all__`` that is not yet in the module's namespace as a submodule, so
every public name is resolved first, and ``alternation`` and ``convert`` are documented as the
functions they are, not as their modules.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pdoc
import pdoc.render


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python scripts/build_api_docs.py OUT_DIR MODULE [MODULE ...]", file=sys.stderr)
        return 2
    out, modules = Path(argv[0]), argv[1:]
    for name in ("supportnet", "supportnet.theory"):
        mod = importlib.import_module(name)
        for public in mod.__all__:
            getattr(mod, public)
    pdoc.render.configure(docformat="restructuredtext")
    pdoc.pdoc(*modules, output_directory=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
