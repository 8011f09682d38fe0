"""The examples in examples/ run end to end on a small budget (CI runs them)."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SUPPORTNET_DATA="/nonexistent")  # the stand-in data
    env.pop("SUPPORTNET_FAULT", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip


def test_own_loop_example_trains_with_i_alternation():
    p = _run("own_loop.py", "--epochs", "2", "--subset", "600")
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("epoch")]
    assert [ln.split()[2] for ln in lines] == ["[warmup]", "[i-alt]"]
    accs = [float(re.search(r"test acc ([0-9.]+)", ln).group(1)) for ln in lines]
    assert all(a > 0.2 for a in accs), accs  # well above chance (0.1) on the stand-in data


def test_lightning_example_trains_with_the_callback():
    pytest.importorskip("lightning")
    p = _run("lightning_callback.py", "--epochs", "2", "--subset", "600")
    assert p.returncode == 0, p.stderr[-2000:]
    acc = float(re.search(r"test acc ([0-9.]+)", p.stdout).group(1))
    assert acc > 0.2, p.stdout[-500:]


def test_no_example_shadows_a_package():
    """A script's folder is first on ``sys.path``: an example named like a package it imports
    (``examples/lightning.py``) would import itself instead."""
    import importlib.util

    names = sorted(p.stem for p in (ROOT / "examples").glob("*.py"))
    assert "lightning_callback" in names
    assert [n for n in names if importlib.util.find_spec(n) is not None] == []
    assert all("sys.path" not in (ROOT / "examples" / f"{n}.py").read_text() for n in names)
