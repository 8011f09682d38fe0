import json

import pytest
from conftest import assert_user_error

from supportnet.config import load_config
from supportnet.errors import ConfigError
from supportnet.study import error_auc, run_study, summarize, time_to_target

TRACE = [
    {"epoch": 0.5, "iterations": 10, "seconds": 1.0, "test_acc": 0.5},
    {"epoch": 1.0, "iterations": 20, "seconds": 2.0, "test_acc": 0.7},
    {"epoch": 1.5, "iterations": 30, "seconds": 3.0, "test_acc": 0.9},
]


def test_time_to_target_interpolates_between_trace_points():
    assert time_to_target(TRACE, 0.8) == pytest.approx((25.0, 2.5))
    assert time_to_target(TRACE, 0.7) == pytest.approx((20.0, 2.0))
    assert time_to_target(TRACE, 0.25) == pytest.approx((5.0, 0.5))  # from (0 steps, acc 0)
    assert time_to_target(TRACE, 0.95) is None


def test_error_auc_is_mean_error_over_epochs():
    # trapezoids: 0.5*(0.5+0.3)/2 + 0.5*(0.3+0.1)/2 = 0.3, over 1 epoch
    assert error_auc(TRACE) == pytest.approx(0.3)
    flat = [dict(p, test_acc=0.9) for p in TRACE]
    assert error_auc(flat) == pytest.approx(0.1)


def test_summarize_pairs_ratios_by_seed():
    slow = [dict(p, iterations=2 * p["iterations"], seconds=2 * p["seconds"]) for p in TRACE]
    runs = {
        "sgd": {
            0: {"test_acc": 0.9, "seconds": 3, "iterations": 30, "trace": TRACE},
            1: {"test_acc": 0.9, "seconds": 3, "iterations": 30, "trace": TRACE},
        },
        "b-alt": {0: {"test_acc": 0.9, "seconds": 6, "iterations": 60, "trace": slow}, 1: {"error": "diverged: x"}},
    }
    s = summarize(runs, [0.8])
    assert s["targets"]["sgd_final-0.2"] == pytest.approx(0.898)
    t = s["methods"]["b-alt"]["to_target"]["80%"]
    assert t["iter_ratio_to_sgd"]["mean"] == pytest.approx(2.0) and t["reached"] == 1 and t["of"] == 2
    assert s["methods"]["b-alt"]["diverged"] == [1]
    assert s["methods"]["sgd"]["to_target"]["80%"]["iter_ratio_to_sgd"]["mean"] == pytest.approx(1.0)


def test_run_study_tunes_on_validation_and_writes_outputs(tmp_path):
    base = load_config(
        None,
        [
            "data.name=synthetic",
            "data.subset=256",
            "train.epochs=2",
            "quiet=true",
            "model.kwargs={width: 8, hidden: 32}",
            "train.train_eval_size=0",
            "train.evals_per_epoch=2",
            "train.checkpoint_every=0",
        ],
    )
    s = run_study(
        base,
        ["sgd", "b-alt"],
        [0, 1],
        tmp_path,
        lr_grid=[0.01, 0.1],
        tune_epochs=2,
        tune_val=64,
        targets=[0.3],
        log=lambda *_: None,
    )
    for f in ("study.json", "table.md", "curves.png", "ratio.png"):
        assert (tmp_path / f).is_file(), f
    # every method saw the same grid; the choice is by validation accuracy
    for m in ("sgd", "b-alt"):
        t = s["tuning"][m]
        assert set(t["val_acc"]) == {"0.01", "0.1"}
        assert t["val_acc"][f"{t['lr']:g}"] == max(t["val_acc"].values())
    tuned = json.loads((tmp_path / "tune" / "sgd-lr0.1" / "summary.json").read_text())
    assert "val_acc" in tuned["curve"][-1]
    # the trace has evals_per_epoch points per epoch, with increasing iterations
    trace = s["runs"]["sgd"]["0"]["trace"]
    assert len(trace) == 4 and [p["iterations"] for p in trace] == sorted(p["iterations"] for p in trace)
    assert "| sgd |" in (tmp_path / "table.md").read_text()
    # a second call reuses the finished runs
    again = run_study(
        base,
        ["sgd", "b-alt"],
        [0, 1],
        tmp_path,
        lr_grid=[0.01, 0.1],
        tune_epochs=2,
        tune_val=64,
        targets=[0.3],
        log=lambda *_: None,
    )
    assert again["runs"]["sgd"]["0"]["trace"] == trace


def test_study_needs_sgd(tmp_path):
    with pytest.raises(ConfigError, match="against SGD"):
        run_study(load_config(None, ["data.name=synthetic"]), ["b-alt"], [0], tmp_path)


def test_cli_rejects_bad_seeds(cli, tmp_path):
    assert_user_error(cli("compare", "--data", "synthetic", "--seeds", "0,x", "--out", tmp_path / "o"), "--seeds")
    assert_user_error(
        cli("compare", "--data", "synthetic", "--seeds", "0", "--lr-grid", "0.1,-1", "--out", tmp_path / "o"),
        "--lr-grid",
    )
