"""A CPU-scale analogue of the paper's Table 8: DSD with magnitude pruning against DSD with support pruning.

    python bench/dsd_table.py [--seeds 0,1,2] [--subset 10000] [--epochs 2,1,1]

Fashion-MNIST, convnet-s. Rows: a dense baseline trained for the same total epochs
(E_d + E_s + E_r) with SGD; DSD with magnitude pruning (30% per layer, DSD's ratio);
DSD with ``support-b``; DSD with ``support-i`` (``dsd.eps`` = 0.01: a unit on in at most
1% of batches or examples is pruned). Columns: test error (mean ± std over seeds),
weights pruned in the sparse step, compact parameter count. Writes
bench/out/dsd/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from supportnet.config import load_config
from supportnet.dsd import dsd
from supportnet.models import count_params
from supportnet.train import build, fit

OUT = Path(__file__).resolve().parent / "out" / "dsd"


def ms(v: list[float]) -> str:
    return f"{statistics.fmean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--epochs", default="2,1,1", help="E_d,E_s,E_r")
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--model", default="convnet-s")
    a = ap.parse_args()
    ed, es, er = (int(x) for x in a.epochs.split(","))
    seeds = [int(s) for s in a.seeds.split(",")]
    command = "python bench/dsd_table.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    t0 = time.time()
    base = [
        "data.name=fashion-mnist",
        f"data.subset={a.subset}",
        f"model.name={a.model}",
        "quiet=true",
        "train.train_eval_size=0",
        "train.checkpoint_every=0",
        "train.threads=2",
        f"dsd.dense_epochs={ed}",
        f"dsd.sparse_epochs={es}",
        f"dsd.redense_epochs={er}",
        f"dsd.eps={a.eps}",
    ]
    rows: dict[str, dict[str, list]] = {}
    for seed in seeds:
        cfg = load_config(
            None, base + [f"train.seed={seed}", f"train.epochs={ed + es + er}", f"out={OUT}/seed{seed}/dense-baseline"]
        )
        data, model = build(cfg)
        run = fit(cfg, data=data, model=model, overwrite=True)  # the bench regenerates its own folder
        acc = json.loads((run / "summary.json").read_text())["test_acc"]
        r = rows.setdefault("dense baseline", {"err": [], "sparsity": [], "compact": [], "sparse_err": []})
        r["err"].append(100 * (1 - acc)), r["sparsity"].append(0.0), r["compact"].append(count_params(model))
        print(f"seed {seed} dense baseline: {100 * acc:.2f}%", flush=True)
        for prune in ("magnitude", "support-b", "support-i"):
            c = load_config(None, base + [f"train.seed={seed}", f"dsd.prune={prune}"])
            res = dsd(c, OUT / f"seed{seed}" / prune, data=data, log=lambda *_: None, overwrite=True)
            r = rows.setdefault(f"DSD, {prune}", {"err": [], "sparsity": [], "compact": [], "sparse_err": []})
            r["err"].append(100 * (1 - res["final_test_acc"]))
            r["sparse_err"].append(100 * (1 - res["phases"]["sparse"]["test_acc"]))
            r["sparsity"].append(100 * res["sparsity"]["weights"])
            r["compact"].append(res["params"]["compact"])
            print(
                f"seed {seed} {prune}: {100 * res['final_test_acc']:.2f}%, sparse step "
                f"{100 * res['phases']['sparse']['test_acc']:.2f}%, pruned {100 * res['sparsity']['weights']:.1f}%, "
                f"compact {res['params']['compact']:,}",
                flush=True,
            )
    lines = [
        f"{a.model} on Fashion-MNIST (subset {a.subset}), DSD epochs {ed}+{es}+{er}, seeds {seeds}; "
        f"machine: {torch.get_num_threads()}-thread CPU, torch {torch.__version__}; command: `{command.strip()}`",
        "",
        "| row | test error (%) | error after the sparse step (%) | weights pruned (%) | compact params |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {ms(r['err'])} | {ms(r['sparse_err']) if r['sparse_err'] else '–'} | "
            f"{ms(r['sparsity'])} | {statistics.fmean(r['compact']):,.0f} |"
        )
    md = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(
        json.dumps({"command": command, "rows": rows, "seeds": seeds, "wall_seconds": time.time() - t0}, indent=1)
    )
    (OUT / "results.md").write_text(md)
    print(md)
    print(f"total {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
