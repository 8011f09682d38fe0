"""A finished run is read-only (issue 25): ``fit(cfg, resume=run)`` and ``dsd(..., resume=True)`` of
a finished run say so in one line and write nothing; with another config they are refused. The
command line's cases are rows of the bad-input corpus (tests/test_bad_inputs.py, ``run-*finished*``)."""

import json
import logging

import pytest
from conftest import snapshot

from supportnet.config import load_config
from supportnet.errors import ConfigError

TINY = [("data.name", "synthetic"), ("data.subset", 64), ("quiet", True), ("train.train_eval_size", 0)]
TINY += [("model.kwargs", {"width": 4, "hidden": 8})]


def _cfg(out, *extra):
    return load_config(None, [*TINY, ("train.epochs", 1), ("out", str(out)), *extra])


def _unchanged(before: dict, after: dict) -> None:
    assert {k: v for k, v in after.items() if k != ".supportnet.lock"} == before


def test_fit_resume_of_a_finished_run_writes_nothing_and_logs_one_line(tmp_path, caplog):
    from supportnet.train import fit

    run = fit(_cfg(tmp_path / "run"))
    before = {k: v for k, v in snapshot(run).items() if k != ".supportnet.lock"}
    assert {"final.pt", "summary.json", "model.safetensors", "curves.png", "checkpoint.pt"} <= set(before)
    with caplog.at_level(logging.INFO, logger="supportnet"):
        assert fit(_cfg(tmp_path / "elsewhere"), resume=run) == run
    _unchanged(before, snapshot(run))
    assert not (tmp_path / "elsewhere").exists()
    lines = [r.getMessage() for r in caplog.records if r.name == "supportnet"]
    assert len(lines) == 1 and "has already finished (1 epoch)" in lines[0], lines
    with pytest.raises(ConfigError, match=r"differs .*\(train\.lr\); a finished run is not changed"):
        fit(_cfg(run, ("train.lr", 0.5)), resume=run)
    _unchanged(before, snapshot(run))


def test_a_run_killed_before_its_summary_is_not_finished(tmp_path):
    """summary.json is written last (after final.pt, model.safetensors and curves.png): without it
    the run is resumed and finished again."""
    from supportnet.train import fit, is_finished

    run = fit(_cfg(tmp_path / "run"))
    assert is_finished(run)
    (run / "summary.json").unlink()
    assert not is_finished(run)
    assert fit(_cfg(run), resume=run) == run
    assert is_finished(run) and json.loads((run / "summary.json").read_text())["test_acc"] >= 0


def test_dsd_resume_of_a_finished_run_writes_nothing(tmp_path, caplog):
    from supportnet.dsd import dsd

    sets = [("dsd.prune", "magnitude"), ("dsd.dense_epochs", 1), ("dsd.sparse_epochs", 1), ("dsd.redense_epochs", 1)]
    cfg = _cfg(tmp_path / "d", *sets)
    res = dsd(cfg, tmp_path / "d", log=lambda *_: None)
    before = {k: v for k, v in snapshot(tmp_path / "d").items() if not k.endswith(".supportnet.lock")}
    assert {"dsd.json", "sparse.pt", "pruning.pt", "dense/final.pt", "redense/summary.json"} <= set(before)
    with caplog.at_level(logging.INFO, logger="supportnet"):
        again = dsd(cfg, tmp_path / "d", resume=True)
    assert again == json.loads(json.dumps(res)) and again["final_test_acc"] == res["final_test_acc"]
    after = {k: v for k, v in snapshot(tmp_path / "d").items() if not k.endswith(".supportnet.lock")}
    assert after == before
    lines = [r.getMessage() for r in caplog.records if r.name == "supportnet"]
    assert len(lines) == 1 and "finished DSD run" in lines[0], lines
    with pytest.raises(ConfigError, match=r"differs .*dsd\.sparsity"):
        dsd(_cfg(tmp_path / "d", *sets, ("dsd.sparsity", 0.5)), tmp_path / "d", resume=True)
    after = {k: v for k, v in snapshot(tmp_path / "d").items() if not k.endswith(".supportnet.lock")}
    assert after == before


def test_open_resume_reads_a_run_once_and_fit_takes_what_it_read(tmp_path):
    """``open_resume``: a finished run gives its one line and no state; an unfinished one its
    checkpoint; another config is refused. ``fit`` takes the :class:`Resume` as it is (what the
    command line passes), reading nothing again."""
    from supportnet.train import Resume, fit, open_resume

    run = fit(_cfg(tmp_path / "run"))
    done = open_resume(run, _cfg(run))
    assert done.folder == run and done.state is None and "has already finished (1 epoch)" in done.note
    with pytest.raises(ConfigError, match=r"differs .*\(train\.lr\); a finished run is not changed"):
        open_resume(run, _cfg(run, ("train.lr", 0.5)))
    (run / "summary.json").unlink()
    again = open_resume(run, _cfg(run))
    assert again.note is None and again.state["epoch"] == 1 and again.state["format"] >= 1
    with pytest.raises(ConfigError, match=r"differs .*\(train\.lr\); resume with the run's own config\.yaml"):
        open_resume(run, _cfg(run, ("train.lr", 0.5)))
    (run / "checkpoint.pt").rename(run / "elsewhere.pt")  # fit must not read the folder again
    assert fit(_cfg(run), resume=Resume(run, state=again.state)) == run
    assert json.loads((run / "summary.json").read_text())["test_acc"] >= 0
