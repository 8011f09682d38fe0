"""The weight-phase optimizers in fit() (``train.optimizer``, the ``kfac`` and ``head`` sections):
kill-and-resume is bit-identical as for SGD (tests/test_resume.py), the solver's state is in the
checkpoint, and the combinations fit() cannot run are refused with one line."""

import importlib.util
import signal
from pathlib import Path

import pytest
import torch
from conftest import run_train
from test_resume import BASE

from supportnet.checkpoint import load_checkpoint
from supportnet.cli import main

#: method, optimizer and head options; 3 steps an epoch, 9 in all, a checkpoint every 2 steps
RUNS = {
    "kfac-b-alt": ["--method", "b-alt", "--set", "train.optimizer=kfac", "--set", "kfac.update_every=3",
                   "--set", "kfac.factor_every=2"],
    "kfac-i-alt-head": ["--method", "i-alt", "--set", "support.backend=stored", "--set", "train.optimizer=kfac",
                        "--set", "kfac.update_every=2", "--set", "head.solve=round", "--set", "head.max_iter=5"],
    "kfac-head-epoch": ["--method", "b-alt", "--set", "train.optimizer=kfac", "--set", "head.solve=epoch",
                        "--set", "head.max_iter=5", "--set", "train.label_smoothing=0.1"],
    "adamw": ["--method", "sgd", "--set", "train.optimizer=adamw", "--set", "train.lr=0.003"],
    "soap": ["--method", "sgd", "--set", "train.optimizer=soap", "--set", "train.lr=0.003"],
}  # fmt: skip
#: where to die: mid-epoch after a step (the last checkpoint one step back: the resumed run redoes
#: a step from the saved factors, inverses and momentum), or mid I-alternation's second estimation
#: (after epoch 1's head solve; the resumed run estimates and solves again)
KILLS = {"kfac-b-alt": "step:5", "kfac-i-alt-head": "estimate:2", "kfac-head-epoch": "step:7", "adamw": "step:5",
         "soap": "step:5"}  # fmt: skip
HAVE_HEAVYBALL = importlib.util.find_spec("heavyball") is not None


def _final(run: Path) -> dict:
    return load_checkpoint(run / "final.pt")["state_dict"]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    out = {}
    for name, extra in RUNS.items():
        if name == "soap" and not HAVE_HEAVYBALL:
            continue
        p = run_train(BASE + extra + ["--out", name], root)
        assert p.returncode == 0, p.stderr[-3000:]
        out[name] = (_final(root / name), load_checkpoint(root / name / "checkpoint.pt"))
    return out


@pytest.mark.parametrize("name,fault", KILLS.items())
def test_sigkill_then_resume_is_bit_identical(references, tmp_path, name, fault):
    if name == "soap" and not HAVE_HEAVYBALL:
        pytest.skip("heavyball is not installed (pip install 'supportnet[optim]')")
    p = run_train(BASE + RUNS[name] + ["--out", "run"], tmp_path, fault=fault)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])
    assert not (tmp_path / "run" / "final.pt").exists()
    r = run_train(["--resume", "run", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    want, ref_ck = references[name]
    got = _final(tmp_path / "run")
    assert all(torch.equal(got[k], want[k]) for k in want), f"{name} resumed after {fault} differs"
    rows = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["metrics"]
    assert [r["passes"] for r in rows] == [r["passes"] for r in ref_ck["metrics"]], "pass counts differ"


def test_checkpoint_holds_the_kfac_state(references):
    """Factors, inverses and momentum per preconditioned weight, and the counters."""
    opt = references["kfac-b-alt"][1]["optimizer"]
    assert opt["kfac"]["counts"]["steps"] == 9 and opt["kfac"]["counts"]["inverse_updates"] == 3
    assert opt["kfac"]["counts"]["factor_updates"] == 5
    full = [s for s in opt["state"].values() if "A" in s]
    assert full and all({"A", "G", "A_inv", "G_inv", "momentum_buffer"} <= s.keys() for s in full)


def test_head_solve_under_torchrun_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """head.solve solves on one process's data: under torchrun (WORLD_SIZE > 1) it is refused
    before anything is set up or written (K-FAC itself all-reduces its factors:
    tests/test_distributed.py::test_kfac_factors_are_all_reduced_in_fit)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--data", "synthetic", "--subset", "64", "--epochs", "1", "--quiet", "--out", "run",
                 "--set", "train.optimizer=kfac", "--set", "head.solve=round"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "head.solve" in err and "torchrun" in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
