"""Convergence study: iterations and time to target accuracy, alternation against SGD.

    python bench/convergence.py --regime paper          # the paper's regime, convnet-s, full Fashion-MNIST
    python bench/convergence.py --regime allcnn-cpu     # ALL-CNN-C (width 32/64), 10k images padded to 32x32
    python bench/convergence.py --regime hardthreshold  # tau > 0 against ReLU, SGD only (Sec. 2)
    python bench/convergence.py --regime paper --plan   # measure step costs here and print the expected duration
    python bench/convergence.py --regime paper --smoke  # the same code path on synthetic data, < 1 minute
    python bench/convergence.py --quick                 # the earlier 4-epoch cosine study, small (6 minutes)
    python bench/convergence.py                         # the earlier 4-epoch cosine study (about 80 minutes)
    python bench/convergence.py --levers                # the earlier levers sweep

The protocol is :mod:`supportnet.study` (``supportnet compare --seeds ...`` runs the
same code): one learning-rate grid for every method, chosen on a validation split;
for each seed, every method starts from the same weights and data order; iterations
and seconds to each target are interpolated from a trace taken several times per epoch.

The paper's regime (docs/paper-regime.md, docs/results.md): a constant learning rate tuned per
method, one x0.1 step decay late in the run, 2 SGD warm-up epochs, I-alternation
re-estimated on plateaus of its training objective, targets on a smoothed trace and
paired by seed, free-mode training loss traced, MaskT of every final model, Eq. 41's
absolute beta chosen on the validation split. Runs go ``--jobs`` at a time with one
thread each (``train.threads=1``), so every run, and every wall time compared, has one
core while another run of the study uses the other.

Writes the run folders under ``bench/out/convergence-<regime>/`` (ignored by git) and,
for the paper-regime studies, the committed result ``bench/results/convergence-<regime>.json``
(command, git commit, machine, seeds, per-seed values and traces), ``.md`` and figures
``bench/results/convergence-<regime>-<study>-{trace,ratio}.png``. ``--smoke`` and ``--out``
write everything under the given folder instead. Interrupted runs are reused when it is run again.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from supportnet.config import load_config
from supportnet.study import run_study

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RESULTS = HERE / "results"

ALL_METHODS = ["sgd", "b-alt", "b-alt-energy", "b-alt-vote", "i-alt-stored", "i-alt-snapshot"]
NIN_SMALL = "{widths: [[32, 32, 16], [48, 48, 24], [48, 32]], dropout: 0.0}"  # width-reduced NIN, no dropout

#: name -> (config overrides, study keyword arguments)
# i-alt-snapshot is tuned but not rerun per seed in the full study: without augmentation its supports,
# and so its weights, are bit-identical to i-alt-stored's (tests/test_alternation.py), so its iterations to
# any target are the stored back end's; only its cost per step differs (bench/overhead.py).
FULL_METHODS = [m for m in ALL_METHODS if m != "i-alt-snapshot"]
FULL = {
    "fmnist-convnet-s": (
        [],
        dict(
            methods=FULL_METHODS,
            epochs=4,
            lr_grid=[0.02, 0.05, 0.1],
            tune_epochs=2,
            tune_val=5000,
            targets=[0.88, 0.90, 0.91],
        ),
    ),
    "fmnist20k-nin-small": (
        ["data.subset=20000", "model.name=nin-mnist", f"model.kwargs={NIN_SMALL}"],
        dict(
            methods=["sgd", "b-alt", "i-alt-stored"],
            epochs=2,
            lr_grid=[0.01, 0.03],
            tune_epochs=2,
            tune_val=2000,
            targets=[0.60, 0.65],
        ),
    ),
}
# --quick: 5,000 training examples, scored on a fixed 2,000 of the test set (the same for every seed)
QUICK = {
    "fmnist5k-convnet-s": (
        ["data.subset=5000", "data.test_subset=2000", "train.evals_per_epoch=2"],
        dict(methods=FULL_METHODS, epochs=3, lr_grid=[0.05, 0.1], tune_epochs=2, tune_val=1000, targets=[0.70, 0.75]),
    ),
    "fmnist5k-nin-small": (
        [
            "data.subset=5000",
            "data.test_subset=2000",
            "train.evals_per_epoch=2",
            "model.name=nin-mnist",
            f"model.kwargs={NIN_SMALL}",
        ],
        dict(
            methods=["sgd", "b-alt", "i-alt-stored"],
            epochs=2,
            lr_grid=None,
            tune_epochs=None,
            tune_val=0,
            targets=[0.35, 0.40],
            lr=0.01,
        ),
    ),
}
LEVERS = {
    "fmnist10k-convnet-s-levers": (
        ["data.subset=10000", "data.test_subset=5000"],
        dict(
            methods=[
                "sgd",
                "b-alt",
                "b-alt[beta=0.03]",
                "b-alt[beta=0.3]",
                "b-alt[tau=0.05]",
                "b-alt[warmup=2]",
                "i-alt-stored",
                "i-alt-stored[max_gap=2,min_gap=2]",
                "i-alt-stored[consistency=0.3]",
            ],
            epochs=3,
            lr_grid=None,
            tune_epochs=None,
            tune_val=0,
            targets=[0.80, 0.82],
            seeds=[0, 1],
        ),
    ),
}

# ------------------------------------------------------------------ the paper's regime (docs/paper-regime.md)

#: Relative drop of the I-alternation objective (the epoch's mean training loss under the fixed
#: support) below which an epoch counts as a plateau. Chosen from measured epoch-to-epoch changes
#: (docs/results.md, "Plateau tolerance"); every run's drops are in the result JSON (obj_rel_drop).
PLATEAU_TOL = 0.04
#: Centred running mean over this many evaluations for every target (2 per epoch: +-1 epoch).
SMOOTH_K = 5
PAPER_SCHEDULE = [
    "train.schedule=step",
    "train.epochs=15",
    "train.milestones=[12]",  # one x0.1 decay for the last 3 epochs
    "train.gamma=0.1",
    "train.evals_per_epoch=2",
    "train.trace_train_loss=true",
    "support.warmup=2",
    "support.min_gap=3",
    "support.max_gap=8",
    f"support.plateau_tol={PLATEAU_TOL}",
    "support.patience=1",
]
#: The paper's forms (Sec. 4): B-alt gated energy-rel (default), the majority vote in both applications,
#: I-alt stored gated and linear, both with the consistency penalty (the i-alt default, 1.0).
PAPER_METHODS = {
    "sgd": "sgd",
    "b-alt": "b-alt",
    "b-alt-vote": "b-alt-vote",
    "b-alt-vote-linear": "b-alt-vote[apply=linear]",
    "i-alt-stored": "i-alt-stored",
    "i-alt-stored-linear": "i-alt-stored[apply=linear]",
}
#: Eq. 41 with an absolute beta: grid from the per-unit batch energies of the warmed-up network.
BETA_SEARCH = {
    "label": "b-alt-energy-abs",
    "spec": "b-alt-energy",
    "lr_from": "b-alt",
    "quantiles": [0.03, 0.1, 0.3],
    "batches": 20,
}
PAPER_KW = dict(
    methods=PAPER_METHODS,
    lr_grid=[0.02, 0.05, 0.1],
    tune_epochs=4,  # 2 warm-up + 2 alternation epochs: the alternation forms differ in tuning
    tune_val=5000,
    smooth_k=SMOOTH_K,
    paired=True,
    maskt=True,
    beta_search=BETA_SEARCH,
)
PAPER = {
    "fmnist-convnet-s-paper": (
        PAPER_SCHEDULE + ["train.train_eval_size=5000"],
        dict(PAPER_KW, targets=[0.88, 0.90], tune_overrides=["data.subset=20000"]),
    ),
}
ALLCNN_CPU_MODEL = ["model.name=allcnn-c", "model.kwargs={width: [32, 64]}", "data.pad=2"]
ALLCNN_CPU = {
    "fmnist10k-allcnn-c-w32-paper": (
        PAPER_SCHEDULE
        + ALLCNN_CPU_MODEL
        + ["data.subset=10000", "data.test_subset=5000", "train.train_eval_size=2000"],
        dict(
            PAPER_KW,
            lr_grid=[0.02, 0.05],
            tune_val=2000,
            targets=[0.80, 0.84],
            tune_overrides=["data.subset=8000"],
        ),
    ),
}
# The GPU version (bench/paper_regime_gpu.sh): full-width ALL-CNN-C, 50 epochs, decay at 40, one evaluation
# per epoch, every run of a stage side by side on one GPU (--jobs). The script sets data.subset (default
# 15,000: what fits 9 minutes, estimated in the script) with --set; tuning holds out 3,000 of it.
ALLCNN_GPU = {
    "fmnist-allcnn-c-paper-gpu": (
        [s for s in PAPER_SCHEDULE if not s.startswith(("train.epochs", "train.milestones", "train.evals_per_epoch"))]
        + ["model.name=allcnn-c", "data.pad=2", "train.epochs=50", "train.milestones=[40]", "train.evals_per_epoch=1"]
        + ["train.train_eval_size=2000", "train.device=cuda", "train.loader=device", "train.eval_batch_size=1024"],
        dict(PAPER_KW, lr_grid=[0.02, 0.05], tune_epochs=10, tune_val=3000, targets=[0.88, 0.90]),
    ),
}
# Hard threshold against ReLU (Sec. 2, "no discernable empirical drawbacks"): SGD only, bias-free
# networks with tau > 0 against tau = 0. The ReLU network with biases is the paper regime's SGD run
# (same folder: reused when that regime ran first).
HT_TAUS = [0.02, 0.1]
HARDTHRESHOLD = {
    "fmnist-convnet-s-hardthreshold": (
        PAPER_SCHEDULE + ["train.train_eval_size=5000"],
        dict(
            methods={"sgd": "sgd", "sgd-nobias": "sgd", **{f"sgd-nobias-tau{t:g}": f"sgd[tau={t:g}]" for t in HT_TAUS}},
            method_overrides={
                "sgd-nobias": ["model.kwargs={bias: false}"],
                **{f"sgd-nobias-tau{t:g}": ["model.kwargs={bias: false}"] for t in HT_TAUS},
            },
            lr_grid=[0.02, 0.05, 0.1],
            tune_epochs=4,
            tune_val=5000,
            tune_overrides=["data.subset=20000"],
            smooth_k=SMOOTH_K,
            paired=True,
            targets=[0.90, 0.91],
            runs_root=OUT / "convergence-paper" / "fmnist-convnet-s-paper",
        ),
    ),
}
#: regime -> (studies, write the committed result file, default jobs, default seeds)
REGIMES = {
    "full": (FULL, False, 1, "0,1,2"),
    "quick": (QUICK, False, 1, "0,1,2"),
    "levers": (LEVERS, False, 1, "0,1"),
    "paper": (PAPER, True, 2, "0,1"),
    "allcnn-cpu": (ALLCNN_CPU, True, 2, "0,1"),
    "allcnn-gpu": (ALLCNN_GPU, True, 14, "0,1"),
    "hardthreshold": (HARDTHRESHOLD, True, 2, "0,1"),
}


def smoke_sets(regime: str) -> list[str]:
    """``--smoke``: synthetic data (1,024 images 16x16), tiny widths, 3 epochs; the same code path."""
    model = ["model.kwargs={width: [4, 8]}"] if regime.startswith("allcnn") else ["model.kwargs={width: 8, hidden: 32}"]
    if regime == "hardthreshold":
        model = []  # the method overrides set model.kwargs (bias); convnet-s at full width is fast at 16x16
    return model + [
        "data.name=synthetic",
        "data.subset=384",
        "data.test_subset=128",
        "train.epochs=3",
        "train.milestones=[2]",
        "train.train_eval_size=128",
        "train.device=cpu",
        "train.loader=host",
        "train.eval_batch_size=128",
        "support.warmup=1",
        "support.min_gap=1",
        "support.max_gap=1",
    ]


def smoke_kw(kw: dict) -> dict:
    kw = dict(kw, lr_grid=[0.1] if kw.get("lr_grid") else None, tune_epochs=2, tune_val=128, targets=[0.3, 0.4])
    if kw.get("tune_overrides"):
        kw["tune_overrides"] = ["data.subset=256"]
    if kw.get("beta_search"):
        kw["beta_search"] = dict(kw["beta_search"], batches=2, quantiles=[0.1, 0.5])
    kw.pop("runs_root", None)
    return kw


# ----------------------------------------------------------------------------- provenance


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(__import__("os").sched_getaffinity(0)) if hasattr(__import__("os"), "sched_getaffinity") else None
    gpu = ""
    if torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name(0)}"
    return f"{cpu}, {cores} cores{gpu}, torch {torch.__version__}"


def make_out(ap, out: Path) -> Path:
    """Create a bench script's ``--out`` folder before any measuring, or end with one line, exit 2."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--out {out} cannot be made ({e.strerror or e}); choose another folder")
    return out


def git_commit() -> dict:
    """The commit the bench ran from, and whether the working tree had changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True, timeout=10)
        return {"commit": rev.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


# ----------------------------------------------------------------------------- the bench


def base_config(sets: list[str], a, epochs: int | None):
    head = [
        "data.name=fashion-mnist",
        "quiet=true",
        "train.train_eval_size=0",
        "train.checkpoint_every=0",
        f"train.lr={a.lr}",
        f"train.evals_per_epoch={a.evals_per_epoch}",
        f"train.threads={a.threads}",
    ]
    if epochs is not None:
        head.append(f"train.epochs={epochs}")
    return load_config(None, head + sets + list(a.set))


def run_regime(regime: str, a) -> dict:
    studies, committed, _, _ = REGIMES[regime]
    root = Path(a.out) if a.out else OUT / ("convergence" if regime == "full" else f"convergence-{regime}")
    command = "python bench/convergence.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.time()
    results = {
        "regime": regime,
        "command": command.strip(),
        "machine": machine(),
        **git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "jobs": a.jobs,
        "threads_per_run": a.threads,
        "smoke": a.smoke,
        "collected_only": a.collect,
        "studies": {},
    }
    md = [f"# Convergence study ({regime})\n", f"machine: {results['machine']}  \ncommand: `{command.strip()}`\n"]
    for name, (sets, kw) in studies.items():
        if a.only and a.only not in name:
            continue
        kw = dict(kw)
        epochs = kw.pop("epochs", None)
        if a.smoke:
            sets, kw = sets + smoke_sets(regime), smoke_kw(kw)
        cfg = base_config(sets, a, epochs)
        s_seeds = kw.pop("seeds", seeds)
        if "lr" in kw:
            cfg.train.lr = kw.pop("lr")
        footer = f"{results['machine']}; `{command.strip()}`"
        print(f"== {name}: {cfg.model.name} on {cfg.data.name}, seeds {s_seeds}", flush=True)
        s = run_study(
            cfg, kw.pop("methods"), s_seeds, root / name, jobs=a.jobs, footer=footer,
            log=lambda m: print(m, flush=True), collect_only=a.collect,
            overwrite=True,  # the bench's own folder: runs of an older config are redone, same-config ones reused
            **kw,
        )  # fmt: skip
        results["studies"][name] = s
        md.append(
            f"## {name}\n\n"
            + (root / name / "table.md").read_text()
            + f"\nwall time {s['wall_seconds'] / 60:.1f} min\n"
        )
    results["wall_seconds"] = time.time() - t0
    write_results(regime, committed and not a.smoke and not a.out, root, results, md, a)
    return results


def write_results(regime: str, committed: bool, root: Path, results: dict, md: list[str], a) -> None:
    from supportnet.io import atomic_write_text

    root.mkdir(parents=True, exist_ok=True)
    if a.only and (root / "results.json").exists():  # keep the other studies' results
        old = json.loads((root / "results.json").read_text())
        kept = {k: v for k, v in old.get("studies", {}).items() if k not in results["studies"]}
        results["studies"] = kept | results["studies"]
        md += [f"## {k}\n\n" + (root / k / "table.md").read_text() for k in kept if (root / k / "table.md").exists()]
    text = json.dumps(results, indent=1)
    atomic_write_text(root / "results.json", text)
    atomic_write_text(root / "results.md", "\n".join(md))
    written = [root / "results.json", root / "results.md"]
    if committed:  # the result file docs/results.md cites
        RESULTS.mkdir(exist_ok=True)
        atomic_write_text(RESULTS / f"convergence-{regime}.json", text)
        atomic_write_text(RESULTS / f"convergence-{regime}.md", "\n".join(md))
        written = [RESULTS / f"convergence-{regime}.json", RESULTS / f"convergence-{regime}.md"]
        for name in results["studies"]:
            for fig in ("trace", "ratio", "curves"):
                src = root / name / f"{fig}.png"
                if src.exists():
                    shutil.copyfile(src, RESULTS / f"convergence-{regime}-{name}-{fig}.png")
                    written.append(RESULTS / f"convergence-{regime}-{name}-{fig}.png")
    print("\n".join(md))
    print(f"total {results['wall_seconds'] / 60:.1f} min; written: " + ", ".join(str(p) for p in written))


# ----------------------------------------------------------------------------- --plan

CONTENTION = 1.15  # two single-thread runs side by side share the memory bus: assumed, not measured


def measure_costs(cfg, steps: int = 30) -> dict:
    """Seconds per training step of each method kind (SGD, B-alt, I-alt stored with its penalty), per
    example of a support-estimation pass and per example evaluated, measured here with this config's
    model, data, batch size and threads: a 2-epoch run (1 warm-up) of ``steps`` steps per epoch."""
    import csv
    import tempfile

    from supportnet.study import _method_cfg
    from supportnet.train import build, evaluate, fit

    costs: dict[str, float] = {}
    n = steps * cfg.train.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        for kind, spec in (("sgd", "sgd"), ("b-alt", "b-alt"), ("i-alt", "i-alt-stored")):
            c = _method_cfg(cfg, spec)
            c.data.subset, c.data.val, c.train.epochs, c.support.warmup = n, 0, 2, 1
            c.train.evals_per_epoch, c.train.train_eval_size, c.train.trace_train_loss = 1, 0, False
            c.train.schedule, c.out = "constant", f"{tmp}/{kind}"
            run = fit(c)
            rows = list(csv.DictReader(open(run / "metrics.csv")))
            first, second = float(rows[0]["seconds"]), float(rows[1]["seconds"])
            est = float(rows[1].get("est_seconds") or 0.0)
            costs.setdefault("sgd", first / steps)
            costs[kind] = (second - first - est) / steps
            if kind == "i-alt":
                costs["estimate_per_example"] = est / n
        data, model = build(c)
        k = min(len(data.test), 2000)
        t0 = time.perf_counter()
        evaluate(model, data.test.take(torch.arange(k)), c.train.eval_batch_size)
        costs["eval_per_example"] = (time.perf_counter() - t0) / k
    return costs


def project(cfg, kw: dict, seeds: list[int], jobs: int, costs: dict) -> dict:
    """Projected seconds of a study from measured costs (:func:`measure_costs`): tuning, the
    beta search, every seeded run (warm-up at SGD's cost, I-alt re-estimated every ``min_gap``
    epochs at worst), evaluations and MaskT, ``jobs`` side by side."""
    from supportnet.data import load_data
    from supportnet.study import _method_cfg

    d = cfg.data
    data = load_data(d.name, d.data_dir, subset=d.subset, pad=d.pad, test_subset=d.test_subset)
    n_train, n_test, bs = len(data.train), len(data.test), cfg.train.batch_size
    methods = kw["methods"] if isinstance(kw["methods"], dict) else {m: m for m in kw["methods"]}
    kinds = {m: _method_cfg(cfg, sp).support.method for m, sp in methods.items()}
    if kw.get("beta_search"):
        kinds[kw["beta_search"]["label"]] = "b-alt"
    sup, tr = cfg.support, cfg.train

    def run_s(kind: str, epochs: int, n: int, evals: int) -> float:
        steps = -(-n // bs)
        w = 0 if kind == "sgd" else min(sup.warmup, epochs)
        s = steps * (w * costs["sgd"] + (epochs - w) * costs[kind])
        if kind == "i-alt":
            s += -(-(epochs - w) // sup.min_gap) * n * costs["estimate_per_example"]
        return s + evals * costs["eval_per_example"]

    runs_s = sum(
        run_s(k, tr.epochs, n_train, tr.epochs * tr.evals_per_epoch * (n_test + tr.train_eval_size) + 2 * n_test)
        for k in kinds.values()
        for _ in seeds
    )
    te, tv = kw.get("tune_epochs") or tr.epochs, kw.get("tune_val") or 0
    sub = next((int(o.split("=")[1]) for o in kw.get("tune_overrides") or [] if o.startswith("data.subset=")), None)
    n_tune = min(sub or n_train, n_train - tv)
    tuned = [k for m, k in kinds.items() if not kw.get("beta_search") or m != kw["beta_search"]["label"]]
    tuning_s = len(kw.get("lr_grid") or []) * sum(run_s(k, te, n_tune, te * tv) for k in tuned)
    if kw.get("beta_search"):
        tuning_s += run_s("sgd", sup.warmup, n_train, sup.warmup * n_test)
        tuning_s += len(kw["beta_search"]["quantiles"]) * run_s("b-alt", te, n_tune, te * tv)
    f = CONTENTION if jobs > 1 else 1.0
    return {
        "tuning_s": f * tuning_s / jobs,
        "runs_s": f * runs_s / jobs,
        "total_s": f * (tuning_s + runs_s) / jobs,
        "contention": f,
        "runs": len(kinds) * len(seeds),
        "epochs": tr.epochs,
        "costs": costs,
    }


def plan(regime: str, a) -> dict:
    """Measure the step costs of this regime's method kinds here (``--threads`` threads, a few
    dozen steps each) and project the regime's duration with ``--jobs`` runs side by side."""
    studies = REGIMES[regime][0]
    seeds = [int(s) for s in a.seeds.split(",")]
    out = {}
    for name, (sets, kw) in studies.items():
        if a.only and a.only not in name:
            continue
        kw = dict(kw)
        if a.smoke:
            sets, kw = sets + smoke_sets(regime), smoke_kw(kw)
        cfg = base_config(sets, a, kw.get("epochs"))
        costs = measure_costs(cfg, steps=a.plan_steps)
        out[name] = p = project(cfg, kw, seeds, a.jobs, costs)
        print(
            f"{name}: measured here, seconds per step {json.dumps({k: round(v, 5) for k, v in costs.items()})}\n"
            f"  projected: tuning {p['tuning_s'] / 60:.1f} min + runs {p['runs_s'] / 60:.1f} min = "
            f"{p['total_s'] / 60:.1f} min ({p['runs']} runs of {p['epochs']} epochs, {a.jobs} side by side, "
            f"x{p['contention']} assumed for sharing the memory bus)",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="= --regime quick (about 6 minutes on 2 CPU cores)")
    g.add_argument("--levers", action="store_true", help="= --regime levers")
    g.add_argument("--regime", choices=list(REGIMES), help="which study (default: full)")
    ap.add_argument("--only", help="run only the studies whose name contains this")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the regime's)")
    ap.add_argument("--lr", type=float, default=0.05, help="learning rate where a study does not tune")
    ap.add_argument("--jobs", type=int, help="runs in parallel processes (default: the regime's)")
    ap.add_argument("--threads", type=int, help="torch threads per run (default: 1 with --jobs > 1, else 2)")
    ap.add_argument("--evals-per-epoch", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="synthetic data, tiny model, 3 epochs: < 1 minute")
    ap.add_argument("--plan", action="store_true", help="measure step costs here and print the projected duration")
    ap.add_argument("--plan-steps", type=int, default=30, help="steps per method kind measured by --plan")
    ap.add_argument("--out", help="write everything under this folder (nothing into bench/results)")
    ap.add_argument("--collect", action="store_true", help="train nothing: summarise the runs that finished")
    ap.add_argument("--set", action="append", default=[], help="extra config override for every run (key=value)")
    a = ap.parse_args(argv)
    regime = "quick" if a.quick else "levers" if a.levers else a.regime or "full"
    _, _, jobs, seeds = REGIMES[regime]
    a.jobs = a.jobs or jobs
    a.seeds = a.seeds or ("0" if a.smoke else seeds)
    a.threads = a.threads or (1 if a.jobs > 1 or a.smoke else 2)
    if a.plan:
        plan(regime, a)
        return 0
    run_regime(regime, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
