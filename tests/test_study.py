import json

import pytest
from conftest import assert_user_error

from supportnet.config import load_config
from supportnet.errors import ConfigError
from supportnet.study import error_auc, run_study, study_table, summarize, time_to_target

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


# ------------------------------------------------------------------ the paper's regime (docs/paper-regime.md)


def test_smooth_is_a_centred_running_mean_cut_at_the_ends():
    from supportnet.study import smooth

    assert smooth([1, 2, 3, 4, 5], 1) == [1, 2, 3, 4, 5]
    assert smooth([0, 3, 0, 3, 0], 3) == pytest.approx([1.5, 1.0, 2.0, 1.0, 1.5])
    assert smooth([1.0, 2.0, 3.0, 4.0], 5) == pytest.approx([2.0, 2.5, 2.5, 3.0])


def test_smoothed_target_ignores_a_single_swing():
    swing = [
        {"epoch": 0.5 * (i + 1), "iterations": 10 * (i + 1), "seconds": float(i + 1), "test_acc": a}
        for i, a in enumerate([0.80, 0.90, 0.81, 0.82, 0.84, 0.86, 0.88])
    ]
    assert time_to_target(swing, 0.89)[0] == pytest.approx(19.0)  # raw: the swing at the second point counts
    hit = time_to_target(swing, 0.855, k=3)
    assert hit is not None and hit[0] > 40  # smoothed: reached on the way up, not at the swing
    assert time_to_target(swing, 0.89, k=3) is None


def test_time_to_target_on_a_loss_is_lower_is_better():
    tr = [
        {"iterations": 10, "seconds": 1.0, "train_loss": 1.0},
        {"iterations": 20, "seconds": 2.0, "train_loss": 0.5},
        {"iterations": 30, "seconds": 3.0, "train_loss": 0.4},
    ]
    assert time_to_target(tr, 0.75, key="train_loss", higher=False) == pytest.approx((15.0, 1.5))
    assert time_to_target(tr, 1.5, key="train_loss", higher=False) == (10, 1.0)  # met at the first point
    assert time_to_target(tr, 0.1, key="train_loss", higher=False) is None


def _run(accs, losses, scale=1):
    tr = [
        {
            "epoch": i + 1,
            "iterations": scale * 10 * (i + 1),
            "seconds": scale * (i + 1.0),
            "test_acc": a,
            "train_loss": loss,
        }
        for i, (a, loss) in enumerate(zip(accs, losses))
    ]
    return {"test_acc": accs[-1], "seconds": tr[-1]["seconds"], "iterations": tr[-1]["iterations"], "trace": tr}


def test_paired_targets_are_each_seeds_own_sgd_best():
    runs = {
        "sgd": {0: _run([0.5, 0.8, 0.9], [1.0, 0.5, 0.3]), 1: _run([0.5, 0.6, 0.7], [1.0, 0.8, 0.6])},
        "alt": {0: _run([0.5, 0.8, 0.9], [1.0, 0.5, 0.3], scale=2), 1: _run([0.5, 0.6, 0.7], [1.0, 0.8, 0.6], scale=3)},
    }
    s = summarize(runs, [0.6], k=1, paired=True)
    specs = {sp["name"]: sp for sp in s["target_specs"]}
    assert specs["sgd_best_train_loss"]["by_seed"] == {0: 0.3, 1: 0.6}
    assert specs["sgd_best-0.2"]["by_seed"] == pytest.approx({0: 0.898, 1: 0.698})
    t = s["methods"]["alt"]["to_target"]
    # the same curves, stretched 2x (seed 0) and 3x (seed 1): ratios paired by seed, against each seed's own target
    assert t["sgd_best_train_loss"]["per_seed"]["0"]["iter_ratio_to_sgd"] == pytest.approx(2.0)
    assert t["sgd_best_train_loss"]["per_seed"]["1"]["iter_ratio_to_sgd"] == pytest.approx(3.0)
    assert t["sgd_best-0.2"]["iter_ratio_to_sgd"]["mean"] == pytest.approx(2.5)
    assert t["sgd_best-0.2"]["seconds_ratio_to_sgd"]["mean"] == pytest.approx(2.5)
    assert s["methods"]["sgd"]["to_target"]["60%"]["reached"] == 2
    assert s["methods"]["alt"]["final_acc_diff_to_sgd"]["mean"] == pytest.approx(0.0)  # same final accuracies
    assert "seed 1: 69.80%" in study_table(dict(s, model="m", data="d", subset=None, epochs=3, seeds=[0, 1]))


def test_unit_energy_profile_grid_and_off_fractions(synthetic):
    from supportnet.study import unit_energy_profile
    from supportnet.train import build

    cfg = load_config(None, ["data.name=synthetic", "model.kwargs={width: 8, hidden: 32}", "support.warmup=1"])
    _, model = build(cfg)
    prof = unit_energy_profile(cfg, model.state_dict(), n_batches=3, quantiles=(0.1, 0.5, 0.9))
    grid = prof["grid"]
    assert len(grid) == 3 and grid == sorted(grid) and grid[0] > 0
    assert set(prof["layers"]) == {"features.1", "features.3", "features.5", "classifier.3"}
    assert prof["layers"]["features.1"]["units"] == 8 * 16 * 16  # channels x positions of a 16x16 input
    # a larger beta switches off more of the active (unit, batch) pairs, in every layer
    for layer in prof["layers"]:
        offs = [prof["off_fraction_of_active"][f"{b:g}"][layer] for b in grid]
        assert offs == sorted(offs)
    pooled = [prof["off_fraction_of_active"][f"{b:g}"] for b in grid]
    assert all(0.0 <= v <= 1.0 for d in pooled for v in d.values())


def test_maskt_of_run_evaluates_the_binary_masks(tmp_path):
    from supportnet.study import maskt_of_run
    from supportnet.train import fit

    cfg = load_config(
        None,
        [
            "data.name=synthetic",
            "data.subset=256",
            "train.epochs=1",
            "quiet=true",
            "model.kwargs={width: 8, hidden: 32}",
            "train.train_eval_size=0",
            "train.checkpoint_every=0",
            f"out={tmp_path}",
        ],  # fmt: skip
    )
    run = fit(cfg)
    m = maskt_of_run(run)
    assert m["free_acc"] == pytest.approx(json.loads((run / "summary.json").read_text())["test_acc"])
    assert 0.0 <= m["maskt_acc"] <= 1.0 and m["maskt_acc"] != m["free_acc"]


def test_maskt_of_run_reads_the_config_through_the_bounded_loader(tmp_path):
    """A run folder may come from anyone: its config.yaml goes through load_config (size bound,
    UTF-8 check, bounded YAML), so a file in another encoding is named, not a UnicodeDecodeError."""
    from supportnet.errors import ConfigError
    from supportnet.study import maskt_of_run

    (tmp_path / "config.yaml").write_text("train:\n  epochs: 1\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="UTF-8"):
        maskt_of_run(tmp_path)
