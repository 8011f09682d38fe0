import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run ``python -m supportnet ARGS`` and return the CompletedProcess."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "supportnet", *map(str, args)],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(proc, *words):
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("supportnet: error:"), err
    for w in words:
        assert w.lower() in err.lower(), (w, err)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def synthetic():
    from supportnet.data import load_data

    return load_data("synthetic")


def run_train(args, cwd, fault=None):
    """``supportnet train ARGS`` in a subprocess, optionally with ``SUPPORTNET_FAULT=fault``."""
    e = {k: v for k, v in os.environ.items() if k != "SUPPORTNET_FAULT"}
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    if fault:
        e["SUPPORTNET_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "supportnet", "train", *map(str, args)],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )
