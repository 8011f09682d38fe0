"""Convergence study: iterations and time to target accuracy, alternation against SGD.

    python bench/convergence.py --quick      # about 6 minutes on 2 CPU cores (subset of Fashion-MNIST)
    python bench/convergence.py              # the full study (about 80 minutes on 2 idle CPU cores)
    python bench/convergence.py --levers     # the levers of DESIGN.md (beta, tau, gap, warm-up)

The protocol is :mod:`supportnet.study` (``supportnet compare --seeds ...`` runs the
same code): one learning-rate grid for every method, chosen on a validation split;
for each seed, every method starts from the same weights and data order; iterations
and seconds to each target are interpolated from a trace of test accuracy taken
several times per epoch. Writes ``bench/out/convergence[-quick|-levers]/``: one folder
per study (study.json, table.md, curves.png, ratio.png) and ``results.json`` /
``results.md`` over all studies. Interrupted runs are reused when it is run again.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from supportnet.config import load_config
from supportnet.study import run_study

OUT = Path(__file__).resolve().parent / "out"

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


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small subset, short budget (about 6 minutes on 2 CPU cores)")
    g.add_argument("--levers", action="store_true", help="one learning rate, the alternation levers")
    ap.add_argument("--only", help="run only the studies whose name contains this")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lr", type=float, default=0.05, help="learning rate where a study does not tune")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--evals-per-epoch", type=int, default=3)
    a = ap.parse_args()
    kind = "quick" if a.quick else "levers" if a.levers else "full"
    studies = {"quick": QUICK, "levers": LEVERS, "full": FULL}[kind]
    root = OUT / ("convergence" if kind == "full" else f"convergence-{kind}")
    command = "python bench/convergence.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.time()
    results = {"machine": machine(), "command": command.strip(), "studies": {}}
    md = [f"# Convergence study ({kind})\n", f"machine: {results['machine']}  \ncommand: `{command.strip()}`\n"]
    for name, (sets, kw) in studies.items():
        if a.only and a.only not in name:
            continue
        kw = dict(kw)
        cfg = load_config(
            None,
            [
                "data.name=fashion-mnist",
                f"train.epochs={kw.pop('epochs')}",
                "quiet=true",
                "train.train_eval_size=0",
                "train.checkpoint_every=0",
                f"train.lr={a.lr}",
                f"train.evals_per_epoch={a.evals_per_epoch}",
                "train.threads=2",
            ]
            + sets,
        )
        s_seeds = kw.pop("seeds", seeds)
        if "lr" in kw:
            cfg.train.lr = kw.pop("lr")
        footer = f"{results['machine']}; `{command.strip()}`"
        print(f"== {name}: {cfg.model.name} on {cfg.data.name}, seeds {s_seeds}", flush=True)
        s = run_study(
            cfg,
            kw.pop("methods"),
            s_seeds,
            root / name,
            jobs=a.jobs,
            footer=footer,
            log=lambda m: print(m, flush=True),
            overwrite=True,  # the bench's own folder: runs of an older config are redone, same-config ones reused
            **kw,
        )
        results["studies"][name] = {
            k: s[k]
            for k in (
                "data",
                "model",
                "model_kwargs",
                "subset",
                "epochs",
                "seeds",
                "lr_grid",
                "tuning",
                "targets",
                "methods",
                "wall_seconds",
            )
        }
        md.append(
            f"## {name}\n\n"
            + (root / name / "table.md").read_text()
            + f"\nwall time {s['wall_seconds'] / 60:.1f} min\n"
        )
    results["wall_seconds"] = time.time() - t0
    root.mkdir(parents=True, exist_ok=True)
    if a.only and (root / "results.json").exists():  # keep the other studies' results
        old = json.loads((root / "results.json").read_text())
        kept = {k: v for k, v in old.get("studies", {}).items() if k not in results["studies"]}
        results["studies"] = kept | results["studies"]
        md += [f"## {k}\n\n" + (root / k / "table.md").read_text() for k in kept if (root / k / "table.md").exists()]
    (root / "results.json").write_text(json.dumps(results, indent=1))
    (root / "results.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"total {results['wall_seconds'] / 60:.1f} min; written {root}/results.json, results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
