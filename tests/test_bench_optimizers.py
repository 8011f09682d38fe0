"""bench/optimizers.py: the budget protocol's arithmetic, its divergence rule, and its --smoke run."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import optimizers as ob  # noqa: E402


def test_interpolated_time_to_target():
    assert ob.interp_time([1, 2, 4], [0.80, 0.90, 0.95], 0.85) == pytest.approx(1.5)
    assert ob.interp_time([1, 2, 4], [0.80, 0.90, 0.95], 0.925) == pytest.approx(3.0)
    assert ob.interp_time([1, 2, 4], [0.80, 0.90, 0.95], 0.96) is None  # never reached
    assert ob.interp_time([1, 2, 4], [0.91, 0.92, 0.95], 0.90) == -1  # censored at the smallest budget


def _recs(accs_by_budget, seconds_per_epoch=10.0):
    return {
        b: {s: {"val_acc": a + 0.001 * s, "seconds": b * seconds_per_epoch} for s in ob.SEEDS}
        for b, a in accs_by_budget.items()
    }


def test_ratio_to_sgd_with_a_bound_where_the_method_is_censored():
    sgd = _recs({1: 0.88, 2: 0.90, 4: 0.92})
    fast = _recs({1: 0.89, 2: 0.92, 4: 0.93})
    r = ob.ratio_interval(fast, sgd, 0.905, None)
    assert r["sgd"] == pytest.approx(2.0 + 2 * (0.905 - 0.901) / (0.921 - 0.901))
    assert 0 < r["ratio"] < 1 and r["lo"] <= r["ratio"] <= r["hi"]
    # half the seconds per epoch: the wall-time ratio halves too
    cheap = _recs({1: 0.89, 2: 0.92, 4: 0.93}, seconds_per_epoch=5.0)
    assert ob.ratio_interval(cheap, sgd, 0.905, "seconds")["ratio"] == pytest.approx(r["ratio"] / 2)
    # reached at the smallest budget: only a bound, smallest budget / SGD's time
    censored = _recs({1: 0.95, 2: 0.96, 4: 0.97})
    c = ob.ratio_interval(censored, sgd, 0.905, None)
    assert c["ratio"] is None and c["upper"] == pytest.approx(1 / r["sgd"])
    assert ob._ratio_text(c) == f"≤ {c['upper']:.2f}"
    assert ob.ratio_interval(sgd, sgd, 0.99, None)["ratio"] is None  # neither reaches it


def test_a_diverged_run_moves_its_budget_to_the_next_lower_rate(tmp_path):
    q = ob.Queue(tmp_path)
    grid = ob.METHODS["sgd"][2]

    def put(lr, b, s, **rec):
        d = tmp_path / ob.job_name("sgd", lr, b, s)
        d.mkdir(parents=True, exist_ok=True)
        (d / "job.json").write_text(json.dumps({"val_acc": 0.5, **rec}))

    assert q.best_lr("sgd") is None  # tuning unfinished: nothing to run at the budgets yet
    for i, lr in enumerate(grid):
        put(lr, ob.TUNE_BUDGET, 0, val_acc=0.80 + 0.01 * i)
    top = grid[-1]
    assert q.best_lr("sgd") == top and q.rate_for("sgd", 4) == top
    put(top, 4, 2, diverged="nan", val_acc=0.0)
    assert q.rate_for("sgd", 4) == grid[-2] and q.rate_for("sgd", 1) == top
    names = [j[0] for j in q.jobs() if j[0] and j[1] == "sgd" and j[3] == 4]
    assert names == [ob.job_name("sgd", grid[-2], 4, s) for s in ob.SEEDS]


def test_smoke_runs_the_protocol_end_to_end(tmp_path):
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "optimizers.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "results" / "optimizers.json").read_text())
    assert res["command"].startswith("python bench/optimizers.py") and res["commit"]
    assert set(res["methods"]) == {"sgd", "kfac", "kfac-i-alt", "i-alt-head"}
    for m, row in res["methods"].items():
        assert row["grid"] == ob.METHODS[m][2] and len(row["grid"]) <= ob.GRID_SIZE
        assert all(v is not None for v in row["tuning_val_acc"].values())
        for b in ("1", "2"):
            per = row["budgets"][b]["per_seed"]
            assert set(per) == {"0", "1"} and all(r["cpu_seconds"] > 0 for r in per.values())
    kfac = res["methods"]["kfac"]["budgets"]["2"]
    sgd = res["methods"]["sgd"]["budgets"]["2"]
    assert kfac["passes_per_epoch"]["mean"] > sgd["passes_per_epoch"]["mean"]  # line-search forwards counted
    assert (tmp_path / "results" / "optimizers-budget.png").stat().st_size > 0
