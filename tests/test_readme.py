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
