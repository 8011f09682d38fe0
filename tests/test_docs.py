"""Every public name has a docstring (the API reference, `make docs`, is generated from them)."""

import inspect

import pytest

import supportnet


def _public_members(obj):
    for name, member in inspect.getmembers(obj):
        if name.startswith("_") or getattr(member, "__module__", "").split(".")[0] != "supportnet":
            continue
        if inspect.isfunction(member) or isinstance(member, property):
            yield name, member


@pytest.mark.parametrize("name", supportnet.__all__)
def test_public_name_has_a_docstring(name):
    obj = getattr(supportnet, name)
    assert (obj.__doc__ or "").strip(), f"supportnet.{name} has no docstring"
    if inspect.isclass(obj) and not issubclass(obj, Exception):
        missing = [m for m, member in _public_members(obj) if not (inspect.getdoc(member) or "").strip()]
        assert not missing, f"supportnet.{name} methods without a docstring: {missing}"


@pytest.mark.parametrize("package", ["supportnet", "supportnet.theory"])
def test_static_names_equal_the_lazy_table(package):
    """supportnet and supportnet.theory import their public names on first use; the
    ``if TYPE_CHECKING:`` block, which type checkers and IDEs read, must name the same objects
    from the same submodules."""
    import ast
    import importlib
    from pathlib import Path

    mod = importlib.import_module(package)
    tree = ast.parse(Path(mod.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    static = {a.name: node.module for node in block.body for a in node.names}
    assert static == mod._EXPORTS and sorted(static) == sorted(mod.__all__)
    for name, module in static.items():
        assert getattr(mod, name).__module__ == f"{package}.{module}"
