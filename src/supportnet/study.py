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

The paper's regime (docs/paper-regime.md; ``paired=True``, ``smooth_k > 1``): targets are taken on a
*smoothed* trace (a centred running mean of ``smooth_k`` evaluations, because a constant
rate makes test accuracy swing by about 0.5 point between evaluations) and *paired by
seed*: for seed ``s``, SGD's best smoothed free-mode training loss and SGD's best smoothed
test accuracy − 0.2 point, both of SGD's own run with seed ``s``; fixed accuracy targets
beside them. ``beta_search`` tunes Eq. 41's absolute beta on the validation split from a
grid derived from the per-unit energies of the warmed-up network
(:func:`unit_energy_profile`), and ``maskt=True`` adds each final model's test accuracy
with the binary masks as activations (the paper's Table 2 MaskT).

Over 500 lines: it is one protocol, end to end: tuning, runs, the time-to-target metrics, and
the table and plots that read the same ``study.json`` structure the summary writes; a change
to a metric changes its table column and its plot. The plots (``plot_*``, about 130 lines) are
the one separable seam.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ._optional import plot
from .build import build
from .checkpoint import load_checkpoint
from .compare import method_config
from .config import Config, apply_override, from_dict, load_config, resolve_method_defaults, validate
from .data import batches, epoch_order
from .errors import ConfigError, DivergenceError
from .io import atomic_write_text
from .layers import layer_mode, threshold_layers, unit_energy
from .report import _save, plt
from .runfolder import check_run_folder, claim_run_folder, releases_run_folders
from .step import evaluate
from .train import fit

_log = logging.getLogger("supportnet")

#: The method that every ratio is taken against.
BASELINE = "sgd"
#: Set by ``run_study(collect_only=True)``: summarise the finished runs, train nothing.
_COLLECT = {"on": False}
UNFINISHED = "unfinished: no summary.json (collected without training)"


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


#: What a study's folder may hold when the same study runs again (its finished runs are reused).
STUDY_REUSE = ("study.json", "table.md", "curves.png", "ratio.png", "trace.png", "seed*", "tune")


def _fit_job(cfg_dict: dict, overwrite: bool = False) -> dict:
    """Train one config (in this process or a worker) and return its summary, or the divergence."""
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

    try:
        return _resolved(load_config(same)).to_dict() == _resolved(c).to_dict()
    except ConfigError:
        return False


def _run_all(cfgs: list[Config], jobs: int, log, overwrite: bool = False) -> list[dict]:
    """Run independent configs, ``jobs`` at a time (spawned workers); results in input order.

    A run whose folder already holds a ``summary.json`` for the same config is reused, and one
    that holds an unfinished run of the same config is run again, so an interrupted study
    continues where it stopped. A folder holding a run of another config is refused, before
    anything is trained, unless ``overwrite`` (:mod:`supportnet.runfolder`). With
    ``--collect`` nothing is trained: the runs not finished are marked ``unfinished``.
    """
    results: list[dict | None] = [None] * len(cfgs)
    todo: list[tuple[int, bool]] = []  # (index, overwrite its folder)
    for i, c in enumerate(cfgs):
        same = _same_config(c)
        if same and (Path(c.out) / "summary.json").is_file():
            results[i] = json.loads((Path(c.out) / "summary.json").read_text()) | {"out": c.out}
            log(f"  reuse {c.out}")
            continue
        if _COLLECT["on"]:
            results[i] = {"error": UNFINISHED, "out": c.out}
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

    return resolve_method_defaults(c.copy())


# ----------------------------------------------------------------------------- metrics


def smooth(values: list[float], k: int) -> list[float]:
    """Centred running mean over ``k`` points (``k`` odd); the window is cut at both ends, so
    the first and last points average fewer (and one-sided) neighbours. ``k <= 1``: unchanged."""
    if k <= 1:
        return list(values)
    h = k // 2
    return [statistics.fmean(values[max(0, i - h) : i + h + 1]) for i in range(len(values))]


def time_to_target(
    trace: list[dict], target: float, key: str = "test_acc", k: int = 1, higher: bool = True
) -> tuple[float, float] | None:
    """(iterations, seconds) at which ``key`` first reaches ``target`` (``>=`` if ``higher``,
    else ``<=``) on the trace smoothed over ``k`` points (:func:`smooth`), interpolated linearly
    between trace points; None if it never does. Test accuracy starts from (0 steps, 0); other
    keys have no value before the first point, which then counts as reached where it is."""
    pts = [p for p in trace if isinstance(p.get(key), (int, float)) and math.isfinite(p[key])]
    vals = smooth([p[key] for p in pts], k)
    prev = (0, 0.0, 0.0) if key == "test_acc" and higher else None
    for p, v in zip(pts, vals):
        if (v >= target) if higher else (v <= target):
            if prev is None:
                return p["iterations"], p["seconds"]
            span = v - prev[2]
            f = 1.0 if span == 0 else min(1.0, max(0.0, (target - prev[2]) / span))
            return prev[0] + f * (p["iterations"] - prev[0]), prev[1] + f * (p["seconds"] - prev[1])
        prev = (p["iterations"], p["seconds"], v)
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


def _series(r: dict, key: str) -> list[float]:
    return [p[key] for p in r.get("trace", []) if isinstance(p.get(key), (int, float)) and math.isfinite(p[key])]


def target_specs(runs: dict[str, dict[int, dict]], targets: list[float], k: int = 1, paired: bool = False) -> list:
    """The targets of a study. ``paired``: per seed, SGD's best smoothed free-mode training loss
    (when traced) and SGD's best smoothed test accuracy − 0.2 point; otherwise one value, SGD's
    mean final accuracy − 0.2 point. Then the fixed accuracy ``targets``."""
    base = {s: r for s, r in runs.get(BASELINE, {}).items() if "error" not in r}
    specs: list[dict] = []
    if paired:
        loss = {s: min(smooth(_series(r, "train_loss"), k)) for s, r in base.items() if _series(r, "train_loss")}
        if loss:
            specs.append({"name": "sgd_best_train_loss", "key": "train_loss", "higher": False, "by_seed": loss})
        acc = {s: max(smooth(_series(r, "test_acc"), k)) - 0.002 for s, r in base.items() if _series(r, "test_acc")}
        if acc:
            specs.append({"name": "sgd_best-0.2", "key": "test_acc", "higher": True, "by_seed": acc})
    elif base:
        v = statistics.fmean(r["test_acc"] for r in base.values()) - 0.002
        specs.append({"name": "sgd_final-0.2", "key": "test_acc", "higher": True, "value": v})
    specs += [{"name": f"{100 * t:g}%", "key": "test_acc", "higher": True, "value": t} for t in targets]
    return specs


def _target_for(spec: dict, seed) -> float | None:
    return spec["by_seed"].get(seed) if "by_seed" in spec else spec["value"]


def _hit(r: dict | None, spec: dict, seed, k: int):
    t = _target_for(spec, seed)
    if r is None or "error" in r or t is None:
        return None
    return time_to_target(r["trace"], t, spec["key"], k, spec["higher"])


def _per_seed(r: dict, k: int) -> dict:
    """One run's figures: final and best smoothed accuracy, final free-mode training loss,
    the epochs at which supports were re-estimated, the objective's relative drop per epoch."""
    acc, loss = smooth(_series(r, "test_acc"), k), smooth(_series(r, "train_loss"), k)
    obj = [c["obj_loss"] for c in r.get("curve", [])]
    return {
        "final_acc": r["test_acc"],
        "best_smoothed_acc": max(acc) if acc else None,
        "final_smoothed_acc": acc[-1] if acc else None,
        "final_train_loss": loss[-1] if loss else None,
        "best_smoothed_train_loss": min(loss) if loss else None,
        "reestimated_at_epoch": [c["epoch"] - 1 for c in r.get("curve", []) if c.get("reestimated")],
        "obj_rel_drop": [(a - b) / abs(a) if a else None for a, b in zip(obj, obj[1:])],
        "maskt_acc": r.get("maskt_acc"),
    }


def summarize(runs: dict[str, dict[int, dict]], targets: list[float], k: int = 1, paired: bool = False) -> dict:
    """Per-method metrics over seeds. ``runs[method][seed]`` is a run summary (with ``trace``).

    Targets are :func:`target_specs`; iterations and seconds to each are read off the trace
    smoothed over ``k`` points, and their ratios to SGD's are paired by seed (same seed, same
    target value)."""
    specs = target_specs(runs, targets, k, paired)
    named = {sp["name"]: sp["value"] if "value" in sp else statistics.fmean(sp["by_seed"].values()) for sp in specs}
    out: dict = {"targets": named, "target_specs": specs, "smooth_k": k, "paired": paired, "methods": {}}
    base = runs.get(BASELINE, {})
    for m, by_seed in runs.items():
        ok = {s: r for s, r in by_seed.items() if "error" not in r}
        per_seed = {s: _per_seed(r, k) for s, r in ok.items()}
        row: dict = {
            "seeds": sorted(by_seed),
            "diverged": sorted(s for s in by_seed if s not in ok and by_seed[s]["error"] != UNFINISHED),
            "unfinished": sorted(s for s in by_seed if s not in ok and by_seed[s]["error"] == UNFINISHED),
            "lr": next(iter(by_seed.values())).get("lr"),
            "spec": next(iter(by_seed.values())).get("spec", m),
            "final_acc": _ms([r["test_acc"] for r in ok.values()]),
            "best_smoothed_acc": _ms([p["best_smoothed_acc"] for p in per_seed.values()]),
            "final_train_loss": _ms([p["final_train_loss"] for p in per_seed.values()]),
            "maskt_acc": _ms([p["maskt_acc"] for p in per_seed.values()]),
            "error_auc": _ms([error_auc(r["trace"]) for r in ok.values()]),
            "seconds": _ms([r["seconds"] for r in ok.values()]),
            "iterations": _ms([r["iterations"] for r in ok.values()]),
            "per_seed": {str(s): p for s, p in per_seed.items()},
            "final_acc_diff_to_sgd": _ms(
                [r["test_acc"] - base[s]["test_acc"] for s, r in ok.items() if s in base and "error" not in base[s]]
            ),  # paired by seed
            "to_target": {},
        }
        for sp in specs:
            hits = {s: _hit(r, sp, s, k) for s, r in ok.items()}
            ratio_it, ratio_s, seeds_out = [], [], {}
            for s, h in hits.items():
                bh = _hit(base.get(s), sp, s, k)
                ri = h[0] / bh[0] if h and bh and bh[0] > 0 else None
                rs = h[1] / bh[1] if h and bh and bh[1] > 0 else None
                ratio_it.append(ri), ratio_s.append(rs)
                seeds_out[str(s)] = {
                    "target": _target_for(sp, s),
                    "iterations": h[0] if h else None,
                    "seconds": h[1] if h else None,
                    "iter_ratio_to_sgd": ri,
                    "seconds_ratio_to_sgd": rs,
                }
            row["to_target"][sp["name"]] = {
                "target": named[sp["name"]],
                "reached": sum(1 for h in hits.values() if h),
                "of": len(by_seed),
                "iterations": _ms([h[0] for h in hits.values() if h]),
                "seconds": _ms([h[1] for h in hits.values() if h]),
                "iter_ratio_to_sgd": _ms(ratio_it),
                "seconds_ratio_to_sgd": _ms(ratio_s),
                "per_seed": seeds_out,
            }
        out["methods"][m] = row
    return out


# ----------------------------------------------------------------------------- the study


def tune_lr(
    base: Config,
    methods: list[str] | dict[str, str],
    grid: list[float],
    epochs: int,
    val: int,
    out: Path,
    jobs: int = 1,
    log=None,
    overrides: list[str] | None = None,
    strict: bool = True,
    method_overrides: dict[str, list[str]] | None = None,
    overwrite: bool = False,
) -> dict[str, dict]:
    """Pick each method's learning rate from ``grid`` by final validation accuracy (same budget).

    ``methods``: specs, or labels mapped to specs. ``overrides`` (``section.key=value``) apply
    to the tuning runs only (e.g. a smaller ``data.subset``); ``method_overrides[label]`` to
    that method's runs. A method that diverges at every rate raises, unless ``strict=False``:
    then it keeps the smallest rate and is marked ``diverged_everywhere``."""
    log = log or _log.info
    if val <= 0:
        raise ConfigError("tuning needs a validation split; pass --tune-val N (e.g. 5000)")
    labels = methods if isinstance(methods, dict) else {m: m for m in methods}
    cfgs, keys = [], []
    for m, spec in labels.items():
        extra = (method_overrides or {}).get(m, [])
        for lr in grid:
            c = _tuning_config(base, spec, lr, epochs, val, extra + list(overrides or []))
            c.out = str(out / "tune" / f"{_slug(m)}-lr{lr:g}")
            cfgs.append(c), keys.append((m, lr))
    log(f"tuning: {len(labels)} methods x {len(grid)} learning rates, {epochs} epochs, val {val}")
    res = _run_all(cfgs, jobs, log, overwrite)
    chosen: dict[str, dict] = {}
    for (m, lr), r in zip(keys, res):
        acc = r["curve"][-1].get("val_acc") if "error" not in r else None
        d = chosen.setdefault(m, {"val_acc": {}, "lr": None})
        d["val_acc"][f"{lr:g}"] = acc
    for m, d in chosen.items():
        scored = [(a, -float(lr)) for lr, a in d["val_acc"].items() if a is not None]
        if not scored:
            if strict:
                raise DivergenceError(f"{m} diverged at every learning rate of the grid {grid}; add smaller rates")
            d["lr"], d["diverged_everywhere"] = min(grid), True
            log(f"  {m} diverged at every rate of {grid}; it keeps {min(grid):g} and is reported as diverged")
            continue
        d["lr"] = -max(scored)[1]  # best validation accuracy; ties go to the smaller rate
    return chosen


def _method_cfg(base: Config, spec: str, overrides: list[str] | None = None) -> Config:
    """``base`` with the method ``spec`` and then ``overrides`` (``section.key=value``) applied."""
    d = method_config(base, spec).to_dict()
    for item in overrides or []:
        apply_override(d, item)
    return from_dict(d)


def _tuning_config(base: Config, spec: str, lr: float, epochs: int, val: int, overrides: list[str] | None) -> Config:
    c = _method_cfg(base, spec, overrides)
    c.train.lr, c.train.epochs, c.data.val = lr, epochs, val
    c.train.evals_per_epoch, c.train.train_eval_size, c.train.trace_train_loss = 1, 0, False
    return c


# ----------------------------------------------------------------------------- Eq. 41's absolute beta


def unit_energy_profile(cfg: Config, state_dict: dict, n_batches: int = 20, quantiles=(0.03, 0.1, 0.3)) -> dict:
    """Per-unit batch energies ``sum_n relu_tau(q)^2`` (Eq. 40) of a trained network, and a beta grid.

    The network (``state_dict``, e.g. the end of the warm-up) runs in free mode, in training
    mode (dropout as the B-alternation step sees it), on ``n_batches`` batches of
    ``cfg.train.batch_size`` in the order of the first alternation epoch. For each threshold
    layer: the units, their mean batch energy, the fraction of (unit, batch) pairs with zero
    energy, and quantiles. The grid is the ``quantiles`` of the positive energies pooled over
    every layer and batch, to two significant digits: with that beta, Eq. 41 switches off that
    fraction of the (unit, batch) pairs that are on. Eq. 41 has one beta for every layer, so
    the fraction switched off per layer (``off_fraction``) differs; it is recorded too.
    """
    import torch

    data, model = build(cfg)
    model.load_state_dict(state_dict)
    device = _device(cfg)
    model.to(device).train()
    got: dict[str, list] = {n: [] for n, _ in threshold_layers(model)}
    hooks = [
        lay.register_forward_hook(lambda mod, i, o, n=n: got[n].append(unit_energy(o.detach()).flatten()))
        for n, lay in threshold_layers(model)
    ]
    order = epoch_order(len(data.train), cfg.train.seed, cfg.support.warmup)
    try:
        with torch.no_grad(), layer_mode(model, "free"):
            for b, (x, _, _) in enumerate(batches(data.train, cfg.train.batch_size, order)):
                if b >= n_batches:
                    break
                model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
    per = {n: torch.cat(v).double().cpu() for n, v in got.items()}
    pooled = torch.cat([v[v > 0] for v in per.values()])
    qs = torch.quantile(pooled.float(), torch.tensor(list(quantiles), dtype=torch.float32)).tolist()
    grid = sorted({float(f"{q:.2g}") for q in qs})
    layers = {
        n: {
            "units": v.numel() // max(1, min(n_batches, len(got[n]))),
            "mean_energy": v.mean().item(),
            "zero_fraction": (v == 0).double().mean().item(),
            "quantiles": dict(
                zip(["0.1", "0.5", "0.9"], torch.quantile(v.float(), torch.tensor([0.1, 0.5, 0.9])).tolist())
            ),
        }
        for n, v in per.items()
    }
    off = {
        f"{b:g}": {n: ((v > 0) & (v <= b)).double().sum().item() / max(1, (v > 0).sum().item()) for n, v in per.items()}
        for b in grid
    }
    return {
        "batches": min(n_batches, len(next(iter(got.values())))),
        "batch_size": cfg.train.batch_size,
        "quantiles": list(quantiles),
        "pooled_positive_quantiles": dict(zip([f"{q:g}" for q in quantiles], qs)),
        "grid": grid,
        "layers": layers,
        "off_fraction_of_active": off,
    }


def search_beta(
    base: Config,
    search: dict,
    lrs: dict[str, float],
    seed: int,
    tune: dict,
    out: Path,
    jobs: int,
    log,
    overwrite: bool = False,
) -> dict:
    """Eq. 41's absolute beta, chosen on the validation split (``search``: ``label``, ``spec``,
    ``lr_from``, optional ``quantiles``, ``batches``).

    1. The warm-up of the runs: SGD for ``support.warmup`` epochs at the rate chosen for
       ``lr_from``, seed ``seed``, on the training set of the runs.
    2. :func:`unit_energy_profile` of that network gives the grid.
    3. One tuning run per grid value (the tuning budget and split of ``tune``), at that rate;
       the best final validation accuracy wins (ties: the smaller beta)."""
    lr = lrs[search["lr_from"]]
    w = method_config(base, "sgd")
    w.train.lr, w.train.epochs, w.train.seed = lr, max(1, base.support.warmup), seed
    w.train.evals_per_epoch, w.train.train_eval_size, w.train.trace_train_loss = 1, 0, False
    w.out = str(out / "tune" / f"warmup-probe-lr{lr:g}-seed{seed}")
    log(f"beta search: warm-up probe ({w.train.epochs} epochs of SGD at lr {lr:g})")
    (r,) = _run_all([w], 1, log, overwrite)
    if "error" in r:
        raise DivergenceError(f"the warm-up probe for the beta search diverged at lr {lr:g}: {r['error']}")

    state = load_checkpoint(Path(w.out) / "final.pt")["state_dict"]
    prof = unit_energy_profile(w, state, search.get("batches", 20), tuple(search.get("quantiles", (0.03, 0.1, 0.3))))
    log(
        "beta grid (absolute, from the warmed-up network's per-unit energies): "
        + ", ".join(f"{b:g}" for b in prof["grid"])
    )
    specs = [f"{search['spec']}[beta={b:g}]" for b in prof["grid"]]
    cfgs = []
    for sp in specs:
        c = _tuning_config(base, sp, lr, tune["epochs"], tune["val"], tune.get("overrides"))
        c.out = str(out / "tune" / f"{_slug(sp)}-lr{lr:g}")
        cfgs.append(c)
    res = _run_all(cfgs, jobs, log, overwrite)
    val = {f"{b:g}": (r["curve"][-1].get("val_acc") if "error" not in r else None) for b, r in zip(prof["grid"], res)}
    scored = [(a, -b) for b, a in zip(prof["grid"], val.values()) if a is not None]
    if not scored:
        raise DivergenceError(f"{search['spec']} diverged at every beta of {prof['grid']}; lower the rate")
    beta = -max(scored)[1]
    return {"lr": lr, "beta": beta, "spec": f"{search['spec']}[beta={beta:g}]", "val_acc": val, "profile": prof}


# ----------------------------------------------------------------------------- MaskT


def maskt_of_run(run_dir: str | Path, data=None) -> dict:
    """Test accuracy of a finished run's final weights in free mode and with the binary masks
    as activations (``binary`` mode: the paper's Table 2 MaskT)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")  # bounded, UTF-8 checked: a run folder may be anyone's
    data, model = build(cfg, data)
    model.load_state_dict(load_checkpoint(run_dir / "final.pt")["state_dict"])
    device = _device(cfg)
    model.to(device)
    free = evaluate(model, data.test, cfg.train.eval_batch_size, device)[1]
    binary = evaluate(model, data.test, cfg.train.eval_batch_size, device, mode="binary")[1]
    return {"free_acc": free, "maskt_acc": binary}


def _device(cfg: Config):
    """The run's device where it exists here, else the CPU (a study summarised on another machine)."""
    import torch

    want = cfg.train.device
    return torch.device(want if not want.startswith("cuda") or torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- the study


@releases_run_folders
def run_study(
    base: Config,
    methods: list[str] | dict[str, str],
    seeds: list[int],
    out: str | Path,
    lr_grid: list[float] | None = None,
    tune_epochs: int | None = None,
    tune_val: int = 5000,
    targets: list[float] = (),
    jobs: int = 1,
    log=None,
    footer: str | None = None,
    smooth_k: int = 1,
    paired: bool = False,
    tune_overrides: list[str] | None = None,
    beta_search: dict | None = None,
    maskt: bool = False,
    method_overrides: dict[str, list[str]] | None = None,
    runs_root: str | Path | None = None,
    collect_only: bool = False,
    overwrite: bool = False,
) -> dict:
    """The whole protocol (module docstring); returns the summary written to ``out/study.json``.

    ``methods``: specs (``sgd``, ``i-alt[max_gap=2]``), or labels mapped to specs;
    ``method_overrides[label]``: further config overrides for that method (tuning and runs),
    e.g. ``model.kwargs={bias: false}``. ``beta_search`` adds one method,
    ``beta_search['label']``, whose beta is chosen by :func:`search_beta` after the learning
    rates. ``runs_root``: where the run folders go (default ``out``); studies sharing it reuse
    each other's identical runs. ``collect_only``: train nothing; summarise the runs that
    finished (e.g. after a time limit stopped the study); the others are ``unfinished``.
    ``out`` may hold this study's earlier runs (reused, :data:`STUDY_REUSE`); another run's files
    are refused unless ``overwrite`` (:mod:`supportnet.runfolder`)."""
    log = log or _log.info  # a library logs; the command line shows it
    _COLLECT["on"] = collect_only
    try:
        return _run_study(
            base, methods, seeds, Path(out), lr_grid, tune_epochs, tune_val, targets, jobs, log, footer, smooth_k,
            paired, tune_overrides, beta_search, maskt, method_overrides, runs_root, overwrite,
        )  # fmt: skip
    finally:
        _COLLECT["on"] = False


def _run_study(
    base, methods, seeds, out, lr_grid, tune_epochs, tune_val, targets, jobs, log, footer, smooth_k, paired,
    tune_overrides, beta_search, maskt, method_overrides, runs_root, overwrite,
) -> dict:  # fmt: skip
    """:func:`run_study`'s body (its arguments, positionally): the protocol's steps in order
    (validate, tune, beta search, runs, MaskT, summary, files)."""
    root = Path(runs_root) if runs_root is not None else out
    specs = dict(methods) if isinstance(methods, dict) else {m: m for m in methods}
    extra = {m: list((method_overrides or {}).get(m, [])) for m in specs}
    if BASELINE not in specs:
        raise ConfigError(f"the study measures against SGD; add '{BASELINE}' to --methods")
    if len(seeds) < 1:
        raise ConfigError("no seeds given; e.g. --seeds 0,1,2")
    for m, spec in specs.items():
        _method_cfg(base, spec, extra[m])  # validate every spec before any training
    if beta_search:
        method_config(base, beta_search["spec"])
        if beta_search["lr_from"] not in specs:
            raise ConfigError(f"beta_search lr_from {beta_search['lr_from']!r} is not one of the methods")
    _check_study_numbers(base, seeds, lr_grid, tune_epochs, tune_val)
    claim_run_folder(out, overwrite=overwrite, reuse=STUDY_REUSE, resumable=False)
    t0 = time.time()
    tuning, beta = None, None
    lrs = {m: base.train.lr for m in specs}
    if lr_grid:
        tuning = tune_lr(
            base, specs, lr_grid, tune_epochs or base.train.epochs, tune_val, root, jobs, log, tune_overrides,
            strict=not paired, method_overrides=extra, overwrite=overwrite,
        )  # fmt: skip
        lrs = {m: tuning[m]["lr"] for m in specs}
        log("chosen learning rates: " + ", ".join(f"{m} {lr:g}" for m, lr in lrs.items()))
    if beta_search:
        tune = {"epochs": tune_epochs or base.train.epochs, "val": tune_val, "overrides": tune_overrides}
        try:
            beta = search_beta(base, beta_search, lrs, seeds[0], tune, root, jobs, log, overwrite)
        except DivergenceError as e:
            if not _COLLECT["on"]:
                raise
            log(f"beta search not finished ({e}); {beta_search['label']} left out")
        if beta is not None:
            label = beta_search["label"]
            specs[label], lrs[label], extra[label] = beta["spec"], beta["lr"], []
            log(f"chosen beta: {beta['beta']:g} ({beta['spec']} at lr {beta['lr']:g})")
    cfgs, keys = [], []
    for s in seeds:
        for m, spec in specs.items():
            c = _method_cfg(base, spec, extra[m])
            c.train.seed, c.train.lr = s, lrs[m]
            c.out = str(root / f"seed{s}" / _slug(m))
            cfgs.append(c), keys.append((m, s))
    log(f"runs: {len(specs)} methods x {len(seeds)} seeds, {base.train.epochs} epochs")
    res = _run_all(cfgs, jobs, log, overwrite)
    runs: dict[str, dict[int, dict]] = {}
    for (m, s), r in zip(keys, res):
        r["lr"], r["spec"], r["overrides"] = lrs[m], specs[m], extra[m]
        if maskt and "error" not in r:
            r.update(maskt_of_run(r["out"]))
        runs.setdefault(m, {})[s] = r
    summary = _study_summary(base, runs, seeds, lr_grid, tune_epochs, tune_val, tuning, beta, jobs, t0)
    summary.update(summarize(runs, list(targets), smooth_k, paired))
    keep = ("test_acc", "iterations", "seconds", "curve", "trace", "error", "out", "maskt_acc", "free_acc")
    summary["runs"] = {m: {str(s): {k: r.get(k) for k in keep} for s, r in by.items()} for m, by in runs.items()}
    atomic_write_text(out / "study.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "table.md", study_table(summary))
    plot_study_curves(summary, out / "curves.png", footer)
    plot_ratios(summary, out / "ratio.png", footer)
    if paired:
        plot_trace_curves(summary, out / "trace.png", footer)
    return summary


def _check_study_numbers(base: Config, seeds, lr_grid, tune_epochs, tune_val) -> None:
    """The seeds, learning rates, tuning epochs and hold-out go into configs: the config's ranges apply."""
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


def _study_summary(base, runs, seeds, lr_grid, tune_epochs, tune_val, tuning, beta, jobs, t0) -> dict:
    return {
        "data": base.data.name,
        "model": base.model.name,
        "model_kwargs": base.model.kwargs,
        "subset": base.data.subset,
        "test_subset": base.data.test_subset,
        "pad": base.data.pad,
        "epochs": base.train.epochs,
        "batch_size": base.train.batch_size,
        "schedule": base.train.schedule,
        "milestones": base.train.milestones,
        "gamma": base.train.gamma,
        "momentum": base.train.momentum,
        "weight_decay": base.train.weight_decay,
        "evals_per_epoch": base.train.evals_per_epoch,
        "train_eval_size": base.train.train_eval_size,
        "support": {
            k: getattr(base.support, k) for k in ("warmup", "min_gap", "max_gap", "plateau_tol", "patience", "tau")
        },
        "seeds": list(seeds),
        "lr_grid": lr_grid,
        "tune_epochs": tune_epochs,
        "tune_val": tune_val,
        "tuning": tuning,
        "beta_search": beta,
        "lrs": {m: next(iter(by.values())).get("lr") for m, by in runs.items()},
        "specs": {m: next(iter(by.values())).get("spec") for m, by in runs.items()},
        "method_overrides": {m: next(iter(by.values())).get("overrides") for m, by in runs.items()},
        "jobs": jobs,
        "threads": base.train.threads,
        "wall_seconds": time.time() - t0,
    }


# ----------------------------------------------------------------------------- reporting


def _fmt(ms: dict, scale: float = 1.0, digits: int = 2) -> str:
    if ms["mean"] is None:
        return "–"
    return f"{scale * ms['mean']:.{digits}f} ± {scale * ms['std']:.{digits}f}"


def _target_text(sp: dict) -> str:
    fmt = (lambda v: f"{100 * v:.2f}%") if sp["key"] == "test_acc" else (lambda v: f"{v:.4f}")
    if "value" in sp:
        return f"{sp['name']} = {fmt(sp['value'])}"
    per = ", ".join(f"seed {s}: {fmt(v)}" for s, v in sp["by_seed"].items())
    return f"{sp['name']} ({sp['key']}, per seed: {per})"


def study_table(s: dict) -> str:
    """Markdown: final accuracy, error AUC, time and per-target iterations (ratio to SGD);
    paired studies add the smoothed best accuracy, the free-mode training loss, MaskT and the
    wall-time ratio to each target."""
    names = list(s["targets"])
    paired = s.get("paired", False)
    head = ["method", "lr", "final acc (%)"]
    head += ["best smoothed acc (%)", "final train loss", "MaskT acc (%)"] if paired else []
    head += ["error AUC (%)", "train s"]
    for n in names:
        head += [f"iters to {n}", f"÷ SGD ({n})"] + ([f"seconds ÷ SGD ({n})"] if paired else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in s["methods"].items():
        cells = [m, f"{r['lr']:g}" if r["lr"] is not None else "–", _fmt(r["final_acc"], 100)]
        if paired:
            cells += [_fmt(r["best_smoothed_acc"], 100), _fmt(r["final_train_loss"], 1, 4), _fmt(r["maskt_acc"], 100)]
        cells += [_fmt(r["error_auc"], 100), _fmt(r["seconds"], 1, 0)]
        for n in names:
            t = r["to_target"][n]
            it = _fmt(t["iterations"], 1, 0)
            if t["reached"] < t["of"]:
                it += f" ({t['reached']}/{t['of']} reached)"
            cells += [it, _fmt(t["iter_ratio_to_sgd"], 1, 2)]
            cells += [_fmt(t["seconds_ratio_to_sgd"], 1, 2)] if paired else []
        if r["diverged"]:
            cells[0] += f" (diverged: seeds {r['diverged']})"
        lines.append("| " + " | ".join(cells) + " |")
    specs = s.get("target_specs") or [{"name": n, "key": "test_acc", "value": v} for n, v in s["targets"].items()]
    tt = "; ".join(_target_text(sp) for sp in specs)
    smooth_note = (
        f", targets on a centred running mean of {s['smooth_k']} evaluations" if s.get("smooth_k", 1) > 1 else ""
    )
    return (
        f"{s['model']} on {s['data']}"
        + (f" (subset {s['subset']})" if s["subset"] else "")
        + f", {s['epochs']} epochs, seeds {s['seeds']}{smooth_note}; targets: {tt}\n\n"
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


def _finish_panels(fig, axes, xlabel: str, title: str, footer: str | None, path: Path) -> None:
    """A study figure's two panels: their x label and grid, the legend in the second, the title
    (and ``footer`` under it); saved to ``path``."""
    for ax in axes:
        ax.set_xlabel(xlabel), ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title + (f"\n{footer}" if footer else ""), fontsize=8)
    _save(fig, path)


@plot
def plot_study_curves(s: dict, path: Path, footer: str | None = None) -> None:
    """Training objective and test error against epochs (mean over seeds, band = ±1 std)."""
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
    title = f"{s['model']} on {s['data']}, seeds {s['seeds']}, mean ± std (dotted: support re-estimated)"
    _finish_panels(fig, (a, b), "epoch", title, footer, path)


@plot
def plot_ratios(s: dict, path: Path, footer: str | None = None) -> None:
    """Iterations to each target as a ratio to SGD's (paired by seed; mean ± std)."""
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


@plot
def plot_trace_curves(s: dict, path: Path, footer: str | None = None) -> None:
    """The paper's Fig. 1/3 on the trace: free-mode training loss and smoothed test error against
    iterations (mean over seeds; raw test error faint), support re-estimations dotted (every
    seed), learning-rate decays dashed."""
    k = s.get("smooth_k", 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    per_epoch = None
    for i, (m, by_seed) in enumerate(s["runs"].items()):
        c = colors[i % len(colors)]
        ok = [r for r in by_seed.values() if r.get("trace")]
        if not ok:
            continue
        n = min(len(r["trace"]) for r in ok)
        its = [ok[0]["trace"][j]["iterations"] for j in range(n)]
        per_epoch = per_epoch or (ok[0]["curve"][0]["iterations"] if ok[0].get("curve") else None)
        loss = [[r["trace"][j].get("train_loss") for r in ok] for j in range(n)]
        if all(v is not None for row in loss for v in row):
            a.plot(its, [statistics.fmean(row) for row in loss], "-", color=c, lw=1.2, label=m)
        raw = [statistics.fmean(100 * (1 - r["trace"][j]["test_acc"]) for r in ok) for j in range(n)]
        sm = [
            statistics.fmean(v)
            for v in zip(*[smooth([100 * (1 - p["test_acc"]) for p in r["trace"][:n]], k) for r in ok])
        ]
        b.plot(its, raw, "-", color=c, lw=0.6, alpha=0.3)
        b.plot(its, sm, "-", color=c, lw=1.4, label=m)
        for r in ok:
            for p in r.get("curve", []):
                if p.get("reestimated"):
                    x = p["iterations"] - (per_epoch or 0)
                    for ax in (a, b):
                        ax.axvline(x, color=c, ls=":", lw=0.8, alpha=0.5)
    for mstone in s.get("milestones") or []:
        if per_epoch and s.get("schedule") == "step":
            for ax in (a, b):
                ax.axvline(mstone * per_epoch, color="k", ls="--", lw=0.8)
    base = s["runs"].get(BASELINE, {})
    accs = [p["test_acc"] for r in base.values() for p in r.get("trace", [])]
    if accs:  # keep SGD's scale: a collapsed method is clipped (its numbers are in the table)
        b.set_ylim(0, min(100.0, 3 * 100 * (1 - max(accs))))
    a.set_yscale("log")
    a.set_ylabel("free-mode training loss (train_eval_size subset)")
    b.set_ylabel(f"test error (%), running mean of {k} (faint: raw)")
    title = (
        f"{s['model']} on {s['data']}, seeds {s['seeds']}, mean over seeds "
        f"(dotted: support re-estimated; dashed: lr x{s.get('gamma', 0.1):g})"
    )
    _finish_panels(fig, (a, b), "iterations", title, footer, path)
