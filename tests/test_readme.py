"""Every Python block of README.md and of the documentation pages (docs/*.md) runs, in a fresh
temporary folder, as a user would paste it.

A block whose first line starts with ``# sketch`` shows the shape of code around names the reader
supplies (``model``, ``train_set``, ...) and is not run; every other block must be complete.
"""

import re
import subprocess
import sys

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (page.relative_to(ROOT).as_posix(), block)
    for page in PAGES
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    if not block.startswith("# sketch")
]


def test_readme_has_python_blocks():
    assert any(page == "README.md" for page, _ in BLOCKS), "README.md should show the Python API"


@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=[f"{page}-{i}" for i, (page, _) in enumerate(BLOCKS)])
def test_readme_python_block_runs(i, tmp_path):
    page, block = BLOCKS[i]
    script = tmp_path / f"block{i}.py"
    script.write_text(block)
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert p.returncode == 0, f"{page}:\n{p.stderr[-3000:]}"


# Prepended to an own-loop block: every value the loop hands ``end_epoch`` must be the epoch's
# mean training objective (over its examples), not, say, the last batch's loss.
MEAN_CHECK = """
import torch, torch.nn.functional as _F
from supportnet.alternation import IAlternation as _IAlt, Schedule as _Schedule
_seen, _n = [], [0]
_ce, _backward = _F.cross_entropy, torch.Tensor.backward
def _cross_entropy(inp, target, *a, **k):
    _n[0] = target.shape[0]
    return _ce(inp, target, *a, **k)
def _record(self, *a, **k):
    _seen.append((float(self.detach()), _n[0]))
    return _backward(self, *a, **k)
_F.cross_entropy, torch.Tensor.backward = _cross_entropy, _record
def _checked(orig):
    def end_epoch(self, obj_loss):
        mean = sum(v * n for v, n in _seen) / sum(n for _, n in _seen)
        ok = abs(obj_loss - mean) <= 1e-5 * max(1.0, abs(mean))
        assert ok, f"end_epoch got {obj_loss}, the epoch's mean is {mean}"
        _seen.clear()
        return orig(self, obj_loss)
    return end_epoch
for _cls in (_Schedule, _IAlt):
    _cls.end_epoch = _checked(_cls.end_epoch)
"""
LOOPS = [i for i, (_, block) in enumerate(BLOCKS) if ".end_epoch(" in block]


def _run(block: str, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "loop.py"
    script.write_text(MEAN_CHECK + block)
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    cmd = [sys.executable, str(script)]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("i", LOOPS, ids=[f"{BLOCKS[i][0]}-{i}" for i in LOOPS])
def test_own_loop_blocks_pass_the_epochs_mean_loss_to_end_epoch(i, tmp_path):
    """The README's and docs' own loops feed ``end_epoch`` the epoch's mean, as their comments say."""
    page, block = BLOCKS[i]
    p = _run(block, tmp_path)
    assert p.returncode == 0, f"{page}:\n{p.stderr[-3000:]}"


def test_the_mean_check_catches_the_last_batchs_loss(tmp_path):
    """(The check can fail.) The README's loop handing ``end_epoch`` the last batch's loss is refused."""
    block = next(b for page, b in BLOCKS if page == "README.md" and ".end_epoch(" in b)
    bad = re.sub(r"alt\.end_epoch\([^\n]*\)", "alt.end_epoch(loss.item())", block)
    assert bad != block
    p = _run(bad, tmp_path)
    assert p.returncode != 0 and "the epoch's mean is" in p.stderr, p.stderr[-2000:]
