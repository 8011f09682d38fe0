"""A full disk while checkpointing, and what is left behind (docs/reliability.md)."""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_train

from supportnet.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--data",
    "synthetic",
    "--subset",
    "256",
    "--epochs",
    "2",
    "--quiet",
    "--set",
    "model.kwargs.width=8",
    "--set",
    "model.kwargs.hidden=32",
    "--set",
    "train.train_eval_size=0",
    "--set",
    "train.threads=1",
]


def test_disk_full_at_a_checkpoint_stops_clearly_and_keeps_the_previous_one(tmp_path):
    # atomic writes of a 2-epoch run: config.yaml, then per epoch metrics.csv and checkpoint.pt;
    # the 5th is the second checkpoint
    p = run_train(ARGS + ["--out", "run"], tmp_path, fault="disk-full:5")
    assert p.returncode == 2, p.stderr[-2000:]
    err = p.stderr.strip()
    assert "Traceback" not in p.stderr and len(err.splitlines()) == 1, err
    assert "checkpoint.pt" in err and "No space left" in err and "previous file is intact" in err, err
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # intact and verified
    assert ck["epoch"] == 1
    assert not [f for f in (tmp_path / "run").iterdir() if f.name.endswith(".tmp")]  # no temporary left
    # and the run continues from it once there is space again
    r = run_train(["--resume", "run", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2


@pytest.mark.skipif(not Path("/dev/shm").is_dir() or os.geteuid() != 0, reason="needs root to mount a tmpfs")
@pytest.mark.parametrize("size", ["16k", "40k", "64k", "96k"])
def test_tiny_filesystem(tmp_path, size):
    """A real full disk, filling up at different points of the checkpoint: one line, exit 2.

    Streaming torch.save into a file that fills up fails inside its zip writer as a
    RuntimeError (at 16k, 40k and 96k with torch 2.13), which is why checkpoints are
    serialised in memory first.
    """
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount is not permitted here")
    try:
        p = run_train(ARGS + ["--out", str(mnt / "run")], tmp_path)
        assert p.returncode == 2, p.stderr[-2000:]
        err = p.stderr.strip()
        assert "Traceback" not in p.stderr and len(err.splitlines()) == 1 and "could not write" in err, err
    finally:
        subprocess.run(["umount", str(mnt)])
