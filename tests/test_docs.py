"""Every public name has a docstring (the API reference, `make docs`, is generated from them); the
documentation site builds without a warning; the citation files name the package version."""

import inspect
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

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


# ----------------------------------------------------------------------------- the documentation site


def test_docs_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` (what ``make docs`` runs): no warning, no broken link or anchor, every
    page in the navigation, every API page rendered by mkdocstrings. About 2 s; skipped where the
    ``docs`` extra is not installed (``make docs`` installs it)."""
    pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    p = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "layers" / "index.html").is_file()


def test_docs_figure_copies_equal_their_result_files():
    """A figure a docs page shows from bench/results/ is a copy under docs/img/ (mkdocs serves only
    docs/); the copy must stay the committed result's."""
    copies = {
        "docs/img/convergence-paper-trace.png": "bench/results/convergence-paper-fmnist-convnet-s-paper-trace.png",
        "docs/img/optimizers-budget.png": "bench/results/optimizers-budget.png",
    }
    for copy, original in copies.items():
        assert (ROOT / copy).read_bytes() == (ROOT / original).read_bytes(), f"cp {original} {copy}"


def test_changelog_and_citation_name_the_package_version():
    top = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M).group(1)
    assert top == supportnet.__version__, f"CHANGELOG.md's top version {top} != {supportnet.__version__}"
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(cff["version"]) == supportnet.__version__
    assert cff["preferred-citation"]["title"] == "CNNs are Globally Optimal Given Multi-Layer Support"
    assert (ROOT / "src" / "supportnet" / "py.typed").is_file()


def test_configs_page_tables_the_weight_phase_keys_from_the_config():
    """docs/configs.md's key table is supportnet.config.key_table() (rewrite it with
    python scripts/config_tables.py): every optimizer choice, every kfac.* and head.* key."""
    from supportnet import choices
    from supportnet.config import HeadConfig, KFACConfig, key_table

    text = (ROOT / "docs" / "configs.md").read_text()
    block = text.split("<!-- BEGIN key table (scripts/config_tables.py) -->\n")[1].split("<!-- END key table -->")[0]
    assert block == key_table(), "docs/configs.md's key table is stale: run python scripts/config_tables.py"
    row = next(r for r in block.splitlines() if r.startswith("| `train.optimizer`"))
    assert all(f"`{c}`" in row for c in choices.OPTIMIZERS)
    for sec, cls in (("kfac", KFACConfig), ("head", HeadConfig)):
        assert all(f"| `{sec}.{f}` |" in block for f in cls.__dataclass_fields__), sec


def test_fit_and_the_own_loop_page_say_which_loop_is_the_general_one():
    """``fit`` is the paper's loop (cross-entropy, the ``train.optimizer`` choices); the own loop
    is the general one: its docstring and docs/own-loop.md say so and name every choice."""
    from supportnet.choices import OPTIMIZERS
    from supportnet.train import fit

    page = (ROOT / "docs" / "own-loop.md").read_text()
    for text in (fit.__doc__, page):
        assert "paper's loop" in text and "cross-entropy" in text and "general one" in text
        assert all(f"`{name}`" in text for name in OPTIMIZERS), OPTIMIZERS
    assert "docs/own-loop.md" in fit.__doc__
