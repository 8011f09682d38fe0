"""Convergence study: does alternation reach SGD's accuracy in fewer iterations?

A time-to-target protocol in the spirit of MLCommons AlgoPerf:

1. **Tuning, equal for every method.** Each method trains with every learning
   rate of the same grid, for the same number of epochs, on the training set
   minus a seeded validation hold-out; the rate with the best final
   *validation* accuracy is kept. The test set is never looked at.
2. **Runs.** Each method then trains with its chosen rate for every seed. For a
   given seed every method starts from the same weights and sees the same data
   order; schedule, batch size, weight decay and epoch budget are shared.
3. **Metrics** (mean ± std over seeds), from a trace of test accuracy taken
   ``train.evals_per_epoch`` times per epoch: iterations and training seconds
   to each target accuracy (linear interpolation between trace points), the
   final accuracy, and the area under the test-error curve (the mean test error
   over training, in epoch units). Ratios to SGD are paired by seed.

``run_study`` writes ``study.json``, ``table.md``, ``curves.png`` (the paper's
Fig. 1/3 style: loss and error against epochs, one line per method, support
re-estimations marked) and ``ratio.png`` (iterations to target / SGD's).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ._optional import plot
from .compare import method_config
from .config import Config, from_dict
from .errors import ConfigError, DivergenceError
from .io import atomic_write_text
from .runfolder import claim_run_folder, releases_run_folders

#: The method that every ratio is taken against.
BASELINE = "sgd"


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


#: What a study's folder may hold when the same study runs again (its finished runs are reused).
STUDY_REUSE = ("study.json", "table.md", "curves.png", "ratio.png", "seed*", "tune")


def _fit_job(cfg_dict: dict, overwrite: bool = False) -> dict:
    """Train one config (in this process or a worker) and return its summary, or the divergence."""
    from .train import fit

    cfg = from_dict(cfg_dict)
    try:
        run = fit(cfg, overwrite=overwrite)
    except DivergenceError as e:
        return {"error": f"diverged: {e}", "out": cfg.out}
    s = json.loads((Path(run) / "summary.json").read_text())
    s["out"] = str(run)
    return s


def _same_config(c: Config) -> bool:
    """Whether ``c.out`` holds a run started with the config ``c`` (fields added since: defaults)."""
    same = Path(c.out) / "config.yaml"
    if not same.is_file():
        return False
    from .config import load_config

    try:
        return _resolved(load_config(same)).to_dict() == _resolved(c).to_dict()
    except ConfigError:
        return False


def _run_all(cfgs: list[Config], jobs: int, log, overwrite: bool = False) -> list[dict]:
    """Run independent configs, ``jobs`` at a time (spawned workers); results in input order.

    A run whose folder already holds a ``summary.json`` for the same config is reused, and one
    that holds an unfinished run of the same config is run again, so an interrupted study
    continues where it stopped. A folder holding a run of another config is refused, before
    anything is trained, unless ``overwrite`` (:mod:`supportnet.runfolder`).
    """
    from .runfolder import check_run_folder

    results: list[dict | None] = [None] * len(cfgs)
    todo: list[tuple[int, bool]] = []  # (index, overwrite its folder)
    for i, c in enumerate(cfgs):
        same = _same_config(c)
        if same and (Path(c.out) / "summary.json").is_file():
            results[i] = json.loads((Path(c.out) / "summary.json").read_text()) | {"out": c.out}
            log(f"  reuse {c.out}")
            continue
        check_run_folder(c.out, overwrite=overwrite or same, resumable=False)
        todo.append((i, overwrite or same))
    if jobs <= 1:
        for i, ow in todo:
            log(f"  run {cfgs[i].out}")
            results[i] = _fit_job(cfgs[i].to_dict(), ow)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {i: ex.submit(_fit_job, cfgs[i].to_dict(), ow) for i, ow in todo}
            for i, f in futs.items():
                results[i] = f.result()
                log(f"  done {cfgs[i].out}")
    return results  # type: ignore[return-value]


def _resolved(c: Config) -> Config:
    from .config import resolve_method_defaults

    return resolve_method_defaults(c.copy())


# ----------------------------------------------------------------------------- metrics


def time_to_target(trace: list[dict], target: float) -> tuple[float, float] | None:
    """(iterations, seconds) at which the test accuracy first reaches ``target``, interpolated
    linearly between trace points; None if it never does."""
    prev = {"iterations": 0, "seconds": 0.0, "test_acc": 0.0}
    for p in trace:
        if p["test_acc"] >= target:
            span = p["test_acc"] - prev["test_acc"]
            f = 1.0 if span <= 0 else (target - prev["test_acc"]) / span
            return (
                prev["iterations"] + f * (p["iterations"] - prev["iterations"]),
                prev["seconds"] + f * (p["seconds"] - prev["seconds"]),
            )
        prev = p
    return None


def error_auc(trace: list[dict]) -> float:
    """Mean test error over training: trapezoid area under error(epoch), divided by the epochs."""
    if len(trace) < 2:
        return 1.0 - trace[-1]["test_acc"] if trace else float("nan")
    area = 0.0
    for a, b in zip(trace, trace[1:]):
        area += (b["epoch"] - a["epoch"]) * (2.0 - a["test_acc"] - b["test_acc"]) / 2.0
    return area / (trace[-1]["epoch"] - trace[0]["epoch"])


def _ms(values: list[float]) -> dict:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def summarize(runs: dict[str, dict[int, dict]], targets: list[float]) -> dict:
    """Per-method metrics over seeds. ``runs[method][seed]`` is a run summary (with ``trace``)."""
    base = runs.get(BASELINE, {})
    base_final = [r["test_acc"] for r in base.values() if "error" not in r]
    all_targets = []
    if base_final:
        all_targets.append(("sgd_final-0.2", statistics.fmean(base_final) - 0.002))
    all_targets += [(f"{100 * t:g}%", t) for t in targets]
    out: dict[str, dict] = {"targets": {k: v for k, v in all_targets}, "methods": {}}
    for m, by_seed in runs.items():
        ok = {s: r for s, r in by_seed.items() if "error" not in r}
        row: dict = {
            "seeds": sorted(by_seed),
            "diverged": sorted(s for s in by_seed if s not in ok),
            "lr": next(iter(by_seed.values())).get("lr"),
            "final_acc": _ms([r["test_acc"] for r in ok.values()]),
            "error_auc": _ms([error_auc(r["trace"]) for r in ok.values()]),
            "seconds": _ms([r["seconds"] for r in ok.values()]),
            "iterations": _ms([r["iterations"] for r in ok.values()]),
            "to_target": {},
        }
        for name, t in all_targets:
            hits = {s: time_to_target(r["trace"], t) for s, r in ok.items()}
            ratio_it, ratio_s = [], []
            for s, h in hits.items():
                b = base.get(s)
                bh = time_to_target(b["trace"], t) if b and "error" not in b else None
                if h and bh:
                    ratio_it.append(h[0] / bh[0])
                    ratio_s.append(h[1] / bh[1])
            row["to_target"][name] = {
                "target": t,
                "reached": sum(1 for h in hits.values() if h),
                "of": len(by_seed),
                "iterations": _ms([h[0] for h in hits.values() if h]),
                "seconds": _ms([h[1] for h in hits.values() if h]),
                "iter_ratio_to_sgd": _ms(ratio_it),
                "seconds_ratio_to_sgd": _ms(ratio_s),
            }
        out["methods"][m] = row
    return out


# ----------------------------------------------------------------------------- the study


def tune_lr(
    base: Config,
    methods: list[str],
    grid: list[float],
    epochs: int,
    val: int,
    out: Path,
    jobs: int = 1,
    log=print,
    overwrite: bool = False,
) -> dict[str, dict]:
    """Pick each method's learning rate from ``grid`` by final validation accuracy (same budget)."""
    if val <= 0:
        raise ConfigError("tuning needs a validation split; pass --tune-val N (e.g. 5000)")
    cfgs, keys = [], []
    for m in methods:
        for lr in grid:
            c = method_config(base, m)
            c.train.lr, c.train.epochs, c.data.val = lr, epochs, val
            c.train.evals_per_epoch, c.train.train_eval_size = 1, 0
            c.out = str(out / "tune" / f"{_slug(m)}-lr{lr:g}")
            cfgs.append(c), keys.append((m, lr))
    log(f"tuning: {len(methods)} methods x {len(grid)} learning rates, {epochs} epochs, val {val}")
    res = _run_all(cfgs, jobs, log, overwrite)
    chosen: dict[str, dict] = {}
    for (m, lr), r in zip(keys, res):
        acc = r["curve"][-1].get("val_acc") if "error" not in r else None
        d = chosen.setdefault(m, {"val_acc": {}, "lr": None})
        d["val_acc"][f"{lr:g}"] = acc
    for m, d in chosen.items():
        scored = [(a, -float(lr)) for lr, a in d["val_acc"].items() if a is not None]
        if not scored:
            raise DivergenceError(f"{m} diverged at every learning rate of the grid {grid}; add smaller rates")
        d["lr"] = -max(scored)[1]  # best validation accuracy; ties go to the smaller rate
    return chosen


@releases_run_folders
def run_study(
    base: Config,
    methods: list[str],
    seeds: list[int],
    out: str | Path,
    lr_grid: list[float] | None = None,
    tune_epochs: int | None = None,
    tune_val: int = 5000,
    targets: list[float] = (),
    jobs: int = 1,
    log=print,
    footer: str | None = None,
    overwrite: bool = False,
) -> dict:
    """The whole protocol (module docstring); returns the summary written to ``out/study.json``.

    ``out`` may hold this study's earlier runs (reused, :data:`STUDY_REUSE`); another run's files
    are refused unless ``overwrite`` (:mod:`supportnet.runfolder`).
    """
    out = Path(out)
    if BASELINE not in [m.split("[")[0] for m in methods]:
        raise ConfigError(f"the study measures against SGD; add '{BASELINE}' to --methods")
    if len(seeds) < 1:
        raise ConfigError("no seeds given; e.g. --seeds 0,1,2")
    for m in methods:
        method_config(base, m)  # validate every spec before any training
    _check_study_numbers(base, seeds, lr_grid, tune_epochs, tune_val)
    claim_run_folder(out, overwrite=overwrite, reuse=STUDY_REUSE, resumable=False)
    t0 = time.time()
    tuning = None
    lrs = {m: base.train.lr for m in methods}
    if lr_grid:
        tuning = tune_lr(base, methods, lr_grid, tune_epochs or base.train.epochs, tune_val, out, jobs, log, overwrite)
        lrs = {m: tuning[m]["lr"] for m in methods}
        log("chosen learning rates: " + ", ".join(f"{m} {lr:g}" for m, lr in lrs.items()))
    cfgs, keys = [], []
    for s in seeds:
        for m in methods:
            c = method_config(base, m)
            c.train.seed, c.train.lr = s, lrs[m]
            c.out = str(out / f"seed{s}" / _slug(m))
            cfgs.append(c), keys.append((m, s))
    log(f"runs: {len(methods)} methods x {len(seeds)} seeds, {base.train.epochs} epochs")
    res = _run_all(cfgs, jobs, log, overwrite)
    runs: dict[str, dict[int, dict]] = {}
    for (m, s), r in zip(keys, res):
        r["lr"] = lrs[m]
        runs.setdefault(m, {})[s] = r
    summary = {
        "data": base.data.name,
        "model": base.model.name,
        "model_kwargs": base.model.kwargs,
        "subset": base.data.subset,
        "epochs": base.train.epochs,
        "batch_size": base.train.batch_size,
        "schedule": base.train.schedule,
        "evals_per_epoch": base.train.evals_per_epoch,
        "seeds": list(seeds),
        "lr_grid": lr_grid,
        "tune_epochs": tune_epochs,
        "tune_val": tune_val,
        "tuning": tuning,
        "jobs": jobs,
        "threads": base.train.threads,
        "wall_seconds": time.time() - t0,
        **summarize(runs, list(targets)),
        "runs": {
            m: {
                str(s): {k: r.get(k) for k in ("test_acc", "iterations", "seconds", "curve", "trace", "error", "out")}
                for s, r in by.items()
            }
            for m, by in runs.items()
        },
    }
    atomic_write_text(out / "study.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "table.md", study_table(summary))
    plot_study_curves(summary, out / "curves.png", footer)
    plot_ratios(summary, out / "ratio.png", footer)
    return summary


def _check_study_numbers(base: Config, seeds, lr_grid, tune_epochs, tune_val) -> None:
    """The seeds, learning rates, tuning epochs and hold-out go into configs: the config's ranges apply."""
    from .config import validate

    for flag, key, values in (
        ("--seeds", "train.seed", seeds),
        ("--lr-grid", "train.lr", lr_grid or []),
        ("--tune-epochs", "train.epochs", [tune_epochs] if lr_grid and tune_epochs is not None else []),
        ("--tune-val", "data.val", [tune_val] if lr_grid else []),
    ):
        for v in values:
            c = base.copy()
            sec, name = key.split(".")
            setattr(getattr(c, sec), name, v)
            try:
                validate(c)
            except ConfigError as e:
                raise ConfigError(f"{flag} {v}: {e}") from None


# ----------------------------------------------------------------------------- reporting


def _fmt(ms: dict, scale: float = 1.0, digits: int = 2) -> str:
    if ms["mean"] is None:
        return "–"
    return f"{scale * ms['mean']:.{digits}f} ± {scale * ms['std']:.{digits}f}"


def study_table(s: dict) -> str:
    """Markdown: final accuracy, error AUC, time and per-target iterations (ratio to SGD)."""
    names = list(s["targets"])
    head = ["method", "lr", "final acc (%)", "error AUC (%)", "train s"]
    for n in names:
        head += [f"iters to {n}", f"÷ SGD ({n})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in s["methods"].items():
        cells = [
            m,
            f"{r['lr']:g}" if r["lr"] is not None else "–",
            _fmt(r["final_acc"], 100),
            _fmt(r["error_auc"], 100),
            _fmt(r["seconds"], 1, 0),
        ]
        for n in names:
            t = r["to_target"][n]
            it = _fmt(t["iterations"], 1, 0)
            if t["reached"] < t["of"]:
                it += f" ({t['reached']}/{t['of']} reached)"
            cells += [it, _fmt(t["iter_ratio_to_sgd"], 1, 2)]
        if r["diverged"]:
            cells[0] += f" (diverged: seeds {r['diverged']})"
        lines.append("| " + " | ".join(cells) + " |")
    tt = ", ".join(f"{n} = {100 * v:.2f}%" for n, v in s["targets"].items())
    return (
        f"{s['model']} on {s['data']}"
        + (f" (subset {s['subset']})" if s["subset"] else "")
        + f", {s['epochs']} epochs, seeds {s['seeds']}; targets: {tt}\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _mean_curve(by_seed: dict, key: str):
    curves = [r["curve"] for r in by_seed.values() if r.get("curve")]
    if not curves:
        return [], [], []
    n = min(len(c) for c in curves)
    ep = [curves[0][i]["epoch"] for i in range(n)]
    vals = [[c[i][key] for c in curves] for i in range(n)]
    return ep, [statistics.fmean(v) for v in vals], [statistics.pstdev(v) for v in vals]


@plot
def plot_study_curves(s: dict, path: Path, footer: str | None = None) -> None:
    """Training objective and test error against epochs (mean over seeds, band = ±1 std)."""
    from .report import _save, plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (m, by_seed) in enumerate(s["runs"].items()):
        c = colors[i % len(colors)]
        for ax, key, scale in ((a, "obj_loss", 1.0), (b, "test_acc", 100.0)):
            ep, mu, sd = _mean_curve(by_seed, key)
            if not ep:
                continue
            if key == "test_acc":
                mu, sd = [scale * (1 - v) for v in mu], [scale * v for v in sd]
            ax.plot(ep, mu, "o-", ms=3, color=c, label=m)
            ax.fill_between(ep, [x - y for x, y in zip(mu, sd)], [x + y for x, y in zip(mu, sd)], color=c, alpha=0.15)
        first = next((r for r in by_seed.values() if r.get("curve")), None)
        for p in (first or {}).get("curve", []):
            if p.get("reestimated"):
                for ax in (a, b):
                    ax.axvline(p["epoch"] - 0.5, color=c, ls=":", lw=0.8, alpha=0.6)
    base = s["runs"].get(BASELINE)
    if base:  # keep SGD's scale: a method far above it is clipped (its numbers are in the table)
        _, lo, _ = _mean_curve(base, "obj_loss")
        _, acc, _ = _mean_curve(base, "test_acc")
        if lo and acc:
            a.set_ylim(0, 2.0 * max(lo))
            b.set_ylim(0, 2.5 * 100 * (1 - min(acc)))
    a.set_ylabel("training objective (under the method's support)"), b.set_ylabel("test error (%)")
    for ax in (a, b):
        ax.set_xlabel("epoch"), ax.grid(alpha=0.3)
    b.legend(fontsize=7)
    fig.suptitle(
        f"{s['model']} on {s['data']}, seeds {s['seeds']}, mean ± std "
        f"(dotted: support re-estimated)" + (f"\n{footer}" if footer else ""),
        fontsize=8,
    )
    _save(fig, path)


@plot
def plot_ratios(s: dict, path: Path, footer: str | None = None) -> None:
    """Iterations to each target as a ratio to SGD's (paired by seed; mean ± std)."""
    from .report import _save, plt

    names = list(s["targets"])
    methods = [m for m in s["methods"] if m != BASELINE]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) * max(1, len(methods)) / 2), 3.6))
    w = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, n in enumerate(names):
            r = s["methods"][m]["to_target"][n]["iter_ratio_to_sgd"]
            if r["mean"] is not None:
                xs.append(j + i * w), ys.append(r["mean"]), es.append(r["std"])
        ax.bar(xs, ys, w, yerr=es, label=m, capsize=2)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(0.6, color="r", lw=0.8, ls="--", label="paper's claim (0.6-0.7)")
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(names))], names)
    ax.set_ylabel("iterations to target ÷ SGD's")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{s['model']} on {s['data']}, seeds {s['seeds']}" + (f"\n{footer}" if footer else ""), fontsize=8)
    _save(fig, path)


def default_jobs() -> int:
    return max(1, min(2, (os.cpu_count() or 1)))
