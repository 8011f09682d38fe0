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
