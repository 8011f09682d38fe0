"""Every command of the ``sh`` blocks of README.md, docs/install.md and docs/cli.md runs, in that
order, as a user would paste them (the README holds the set-up and install lines, docs/cli.md
every ``supportnet`` command); a ``supportnet`` command through ``supportnet.cli.main`` in the test's
process (the start-up of a fresh process is tested elsewhere: tests/test_models.py, test_hostile.py).

They run in a fresh folder against a small stand-in Fashion-MNIST (the official IDX format, 5,600
training and 200 test images of 8x8 pixels written here, found through ``$SUPPORTNET_DATA``; 5,600
so that the study's default 5,000-image validation hold-out leaves some to train on), so the whole
README takes a minute or two instead of hours; everything else is the command as written. The ``make``
and ``. .venv/bin/activate`` lines are the set-up that CI itself runs (``make test``) or the
7-minute demo (whose table is its own output), and are checked only for being Makefile targets; the
``pip install`` lines install into the user's own environment and are checked only for naming
extras that pyproject.toml defines.
``data check`` must report the stand-in files as not verified (exit 2): they are not the
published ones.
"""

import gzip
import os
import re
import shlex
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "docs" / "install.md", ROOT / "docs" / "cli.md"]
SETUP = ("make ", ". .venv/bin/activate", "pip install ")


def _commands() -> list[str]:
    cmds = []
    text = "\n".join(page.read_text() for page in PAGES)
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment
            if line:
                cmds.append(line)
    return cmds


COMMANDS = _commands()


def _idx(path, array: np.ndarray) -> None:
    kind = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, kind, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    fm = root / "data" / "fashion-mnist"
    fm.mkdir(parents=True)
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (10, 8, 8))
    for prefix, n in (("train", 5600), ("t10k", 200)):
        y = rng.integers(0, 10, n)
        x = np.clip(templates[y] + rng.normal(0, 60, (n, 8, 8)), 0, 255)
        _idx(fm / f"{prefix}-images-idx3-ubyte.gz", x)
        _idx(fm / f"{prefix}-labels-idx1-ubyte.gz", y)
    (root / "my.yaml").write_text("train:\n  epochs: 2\n")  # the README's "my.yaml": a user's own config
    return root


def test_readme_has_commands():
    assert any(c.startswith("supportnet") for c in COMMANDS) and any(c.startswith("make test") for c in COMMANDS)


def test_readme_make_lines_are_targets():
    makefile = (ROOT / "Makefile").read_text()
    for c in COMMANDS:
        if c.startswith("make "):
            for target in c.split()[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), c


def test_readme_pip_lines_name_defined_extras():
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([\w-]+) = \[", section, flags=re.M))  # no tomllib before Python 3.11
    assert {"docs", "onnx", "gpu"} <= extras, extras
    pips = [c for c in COMMANDS if c.startswith("pip install ")]
    assert any(c == "pip install -e ." for c in pips), pips
    for c in pips:
        for named in re.findall(r"\.\[([^\]]*)\]", c):
            assert set(named.split(",")) <= extras, c


def test_readme_commands_run_in_order(workdir, cli, monkeypatch):
    """A ``supportnet`` command runs through ``supportnet.cli.main`` in this process (the ``cli``
    fixture: its exit code and output are a fresh process's, without the second of start-up each);
    ``torchrun`` in processes of its own."""
    monkeypatch.setenv("SUPPORTNET_DATA", str(workdir / "data"))
    monkeypatch.setenv("HOME", str(workdir))
    monkeypatch.delenv("SUPPORTNET_FAULT", raising=False)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))  # torchrun's processes
    for cmd in COMMANDS:
        if cmd.startswith(SETUP):
            continue
        argv = shlex.split(cmd)
        if argv[0] == "supportnet":
            p = cli(*argv[1:], cwd=workdir)
        elif argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
            p = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        else:
            pytest.fail(f"README command of an unknown program: {cmd}")
        if argv[1:4] == ["data", "check", "fashion-mnist"]:  # the stand-in files are not the published ones
            assert p.returncode == 2 and "NOT verified" in p.stdout and "Traceback" not in p.stderr, cmd
            continue
        assert p.returncode == 0, f"{cmd}\n{p.stdout[-1500:]}\n{p.stderr[-3000:]}"
