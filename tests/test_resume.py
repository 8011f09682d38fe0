"""Kill a training run with SIGKILL at a chosen moment, resume it, and get the weights an
uninterrupted run gets, bit for bit (CPU, one thread). See docs/reliability.md."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_train

from supportnet.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "--data",
    "synthetic",
    "--subset",
    "384",
    "--epochs",
    "3",
    "--quiet",
    "--set",
    "model.kwargs.width=8",
    "--set",
    "model.kwargs.hidden=32",
    "--set",
    "train.checkpoint_steps=2",
    "--set",
    "train.train_eval_size=0",
    "--set",
    "train.evals_per_epoch=2",
    "--set",
    "train.threads=1",
]  # 3 steps an epoch, 9 in all
METHODS = {
    "sgd": ["--method", "sgd"],
    "b-alt": ["--method", "b-alt"],
    "i-alt-stored": ["--method", "i-alt", "--set", "support.backend=stored", "--set", "support.store=file"],
}
#: where to die: mid-epoch after a step, mid support estimation (or another step), mid checkpoint write
KILLS = {
    "sgd": ["step:5", "step:7", "checkpoint:3"],
    "b-alt": ["step:4", "step:8", "checkpoint:4"],
    "i-alt-stored": ["step:5", "estimate:2", "checkpoint:3"],
}


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "final.pt")["state_dict"]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    out = {}
    for m, extra in METHODS.items():
        p = run_train(BASE + extra + ["--out", m], root)
        assert p.returncode == 0, p.stderr
        out[m] = _weights(root / m)
    return out


@pytest.mark.parametrize("method,fault", [(m, f) for m, fs in KILLS.items() for f in fs])
def test_sigkill_then_resume_is_bit_identical(references, tmp_path, method, fault):
    p = run_train(BASE + METHODS[method] + ["--out", "run"], tmp_path, fault=fault)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])
    assert not (tmp_path / "run" / "final.pt").exists()
    if fault.startswith("checkpoint"):  # the half-written file was never renamed into place
        assert any(f.name.startswith(".checkpoint.pt.") for f in (tmp_path / "run").iterdir())
    r = run_train(["--resume", "run", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = _weights(tmp_path / "run"), references[method]
    assert all(torch.equal(got[k], want[k]) for k in want), f"{method} resumed after {fault} differs"


@pytest.mark.parametrize(
    "extra",
    [
        ["--method", "i-alt", "--set", "support.backend=snapshot"],
        ["--method", "i-alt", "--set", "support.backend=stored"],
    ],
    ids=["snapshot", "stored-in-memory"],
)
def test_resume_rebuilds_supports_from_round_start_weights(tmp_path, extra):
    """No store file to reopen: the supports are recomputed from the round-start weights."""
    ref = run_train(BASE + extra + ["--out", "ref"], tmp_path)
    assert ref.returncode == 0, ref.stderr
    p = run_train(BASE + extra + ["--out", "run"], tmp_path, fault="step:5")  # last checkpoint: step 4, mid-round
    assert p.returncode == -signal.SIGKILL
    r = run_train(["--resume", "run", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = _weights(tmp_path / "run"), _weights(tmp_path / "ref")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_damaged_store_is_reestimated_or_refused_with_strict(tmp_path, references):
    args = BASE + METHODS["i-alt-stored"] + ["--out", "run"]
    assert run_train(args, tmp_path, fault="step:9").returncode == -signal.SIGKILL  # checkpoint at step 8, round 2
    store = tmp_path / "run" / "masks-round002.smask"
    data = bytearray(store.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the payload
    store.write_bytes(bytes(data))
    strict = run_train(["--resume", "run", "--strict"], tmp_path)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert "mask store" in strict.stderr and "--strict" in strict.stderr, strict.stderr
    r = run_train(["--resume", "run", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "re-estimating" in r.stderr
    got, want = _weights(tmp_path / "run"), references["i-alt-stored"]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_dsd_killed_in_the_sparse_step_resumes_exactly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    args = [
        sys.executable,
        "-m",
        "supportnet",
        "dsd",
        "--data",
        "synthetic",
        "--subset",
        "384",
        "--quiet",
        "--prune",
        "support-b",
        "--set",
        "model.kwargs.width=8",
        "--set",
        "model.kwargs.hidden=32",
        "--set",
        "train.checkpoint_steps=2",
        "--set",
        "train.train_eval_size=0",
        "--set",
        "train.threads=1",
        "--set",
        "dsd.dense_epochs=1",
        "--set",
        "dsd.sparse_epochs=2",
        "--set",
        "dsd.redense_epochs=1",
        "--set",
        "dsd.eps=0.2",
    ]
    ref = subprocess.run(args + ["--out", "ref"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # dense is 3 steps, so step 5 is inside the sparse step
    p = subprocess.run(
        args + ["--out", "run"], cwd=tmp_path, env=dict(env, SUPPORTNET_FAULT="step:5"), capture_output=True, text=True
    )
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    r = subprocess.run(
        [sys.executable, "-m", "supportnet", "dsd", "--resume", "run", "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for phase in ("sparse", "redense"):
        got, want = _weights(tmp_path / "run" / phase), _weights(tmp_path / "ref" / phase)
        assert all(torch.equal(got[k], want[k]) for k in want), phase
