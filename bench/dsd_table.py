"""A CPU-scale Table 8 at equal sparsity: does support pruning beat magnitude and channel-norm pruning?

    python bench/dsd_table.py                # convnet-s, 10,000 Fashion-MNIST images, seeds 0,1,2, 2 jobs
    python bench/dsd_table.py --smoke        # synthetic data, 1 seed, tiny: the code path in seconds

For each seed, one dense model is trained to convergence at this budget (``--dense-epochs`` of SGD,
cosine schedule; its free-mode training loss per epoch is in the JSON), and every row starts DSD's
Sparse and re-Dense steps from it (``dsd(..., start=...)``):

* dense + the same E_s + E_r epochs without pruning (the equal-budget control);
* DSD, magnitude pruning at DSD's 30% per layer;
* DSD, support pruning (``support-b``: B-alternation's batch supports, units on in at most
  ``dsd.eps`` of the census batches go); its sparsity is an output;
* DSD, magnitude pruning at support-b's sparsity, unit for unit: in every weight tensor exactly as
  many weights as support-b removed there (``dsd(..., match=...)``);
* DSD, channel-norm (L2) pruning at support-b's sparsity: per layer exactly as many units as
  support-b removed, those with the smallest filter norms (``dsd.prune=channel-l2``);
* with ``--support-i``: the same three rows for ``support-i``.

Test error (mean ± std over seeds) after the Sparse step and after re-Dense, weights and units
pruned, compact parameters; differences to support pruning paired by seed. Writes
bench/results/dsd-equal-sparsity.json (command, commit, machine, seeds, per-seed values) and .md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mean_std(v: list[float]) -> dict | None:
    """Mean and sample std of the values that are not None (None when there are none)."""
    v = [x for x in v if x is not None]
    if not v:
        return None
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}


def ms(v: list[float]) -> str:
    m = mean_std(v)
    return "–" if m is None else f"{m['mean']:.2f} ± {m['std']:.2f}"


def base_sets(a) -> list[str]:
    sets = [
        "data.name=fashion-mnist",
        f"data.subset={a.subset}",
        f"model.name={a.model}",
        "quiet=true",
        "train.checkpoint_every=0",
        "train.threads=1",
        f"train.lr={a.lr}",
        f"dsd.sparse_epochs={a.es}",
        f"dsd.redense_epochs={a.er}",
        f"dsd.eps={a.eps}",
    ]
    if a.smoke:
        sets += [
            "data.name=synthetic",
            "data.subset=384",
            "data.test_subset=128",
            "model.kwargs={width: 8, hidden: 32}",
        ]
    return sets + list(a.set)


def rows_for(kind: str) -> list[tuple[str, list[str], str | None]]:
    """(row name, dsd config overrides, the row whose pruned counts it matches)."""
    return [
        (f"DSD, {kind}", [f"dsd.prune={kind}"], None),
        (f"DSD, magnitude at {kind}'s sparsity", ["dsd.prune=magnitude"], f"DSD, {kind}"),
        (f"DSD, channel-L2 at {kind}'s sparsity", ["dsd.prune=channel-l2"], f"DSD, {kind}"),
    ]


def seed_job(a_dict: dict, seed: int) -> dict:
    """Everything for one seed: the converged dense model, then every row from it."""
    from supportnet.checkpoint import load_checkpoint
    from supportnet.config import load_config
    from supportnet.dsd import dsd
    from supportnet.models import count_params
    from supportnet.train import build, fit

    a = argparse.Namespace(**a_dict)
    out = Path(a.out_dir) / f"seed{seed}"
    base = base_sets(a) + [f"train.seed={seed}"]
    dcfg = load_config(
        None, base + [f"train.epochs={a.dense_epochs}", "train.train_eval_size=2000", f"out={out}/dense"]
    )
    data, model = build(dcfg)
    run = fit(dcfg, data=data, model=model, overwrite=True)  # the bench regenerates its own folder
    s = json.loads((run / "summary.json").read_text())
    state = load_checkpoint(run / "final.pt")["state_dict"]
    res = {
        "dense": {
            "test_acc": s["test_acc"],
            "epochs": a.dense_epochs,
            "params": count_params(model),
            "train_loss_per_epoch": [c["train_loss"] for c in s["curve"]],
            "test_acc_per_epoch": [c["test_acc"] for c in s["curve"]],
        },
        "rows": {},
    }
    plan = [("dense + E_s + E_r epochs, no pruning", ["dsd.prune=magnitude", "dsd.sparsity=0"], None)]
    plan += [("DSD, magnitude 30%", ["dsd.prune=magnitude", "dsd.sparsity=0.3"], None)]
    plan += rows_for("support-b") + (rows_for("support-i") if a.support_i else [])
    for name, sets, match in plan:
        c = load_config(None, base + sets + ["train.train_eval_size=0"])
        r = dsd(
            c, out / name.replace(" ", "_").replace(",", "").replace("'", ""), data=data, log=lambda *_: None,
            start=state, match=res["rows"][match]["pruned_counts"] if match else None, overwrite=True,
        )  # fmt: skip
        res["rows"][name] = {
            "test_err": 100 * (1 - r["final_test_acc"]),
            "sparse_err": 100 * (1 - r["phases"]["sparse"]["test_acc"]),
            "weights_pruned": 100 * r["sparsity"]["weights"],
            "units_pruned": sum(r["sparsity"]["units"].values()),
            "compact_params": r["params"]["compact"],
            "pruned_counts": r["pruned_counts"],
        }
        print(f"seed {seed} {name}: {res['rows'][name]['test_err']:.2f}% error", flush=True)
    return res


def compare(per_seed: dict[int, dict], ref: str, other: str) -> dict:
    """Error of ``ref`` minus error of ``other``, paired by seed (negative: ``ref`` better)."""
    out = {}
    for key in ("sparse_err", "test_err"):
        d = [r["rows"][ref][key] - r["rows"][other][key] for r in per_seed.values() if other in r["rows"]]
        wins = sum(1 for x in d if x < 0)
        verdict = (
            "beats" if d and wins == len(d) else "loses to" if d and wins == 0 else "no consistent difference with"
        )
        out[key] = {
            "diff_per_seed": d,
            "mean": statistics.fmean(d) if d else None,
            "std": statistics.stdev(d) if len(d) > 1 else 0.0,
            "seeds_ref_better": wins,
            "verdict": f"{ref} {verdict} {other}",
        }
    return out


def summary(per_seed: dict, table: dict, dense_err: list[float]) -> dict:
    """Mean and std over seeds of every figure of the table (what the docs quote), from the per-seed values."""
    out = {"dense model": {"test_err": mean_std(dense_err)}}
    for name, cols in table.items():
        rs = [r["rows"][name] for r in per_seed.values()]
        out[name] = {k: mean_std(v) for k, v in cols.items()}
        out[name]["units_pruned_mean"] = statistics.fmean(x["units_pruned"] for x in rs)
        out[name]["compact_params_mean"] = statistics.fmean(x["compact_params"] for x in rs)
    return out


def render(per_seed: dict[int, dict], verdicts: dict, a, seeds: list[int]) -> tuple[str, dict, list[float]]:
    """The Markdown table and paired verdicts; the per-row values over seeds; the dense model's errors."""
    names = list(next(iter(per_seed.values()))["rows"])
    table = {
        name: {k: [r["rows"][name][k] for r in per_seed.values()] for k in ("test_err", "sparse_err", "weights_pruned")}
        for name in names
    }
    dense_err = [100 * (1 - r["dense"]["test_acc"]) for r in per_seed.values()]
    lines = [
        f"{a.model} on {'synthetic' if a.smoke else 'Fashion-MNIST'} (subset {a.subset}), dense {a.dense_epochs} "
        f"epochs, then Sparse {a.es} + re-Dense {a.er} epochs from it; seeds {seeds}",
        "",
        "| row | test error (%) | error after the Sparse step (%) | weights pruned (%) | units pruned "
        "| compact params |",
        "|---|---:|---:|---:|---:|---:|",
        f"| dense model ({a.dense_epochs} epochs), the start of every row | {ms(dense_err)} | – | 0 | 0 | "
        f"{statistics.fmean(r['dense']['params'] for r in per_seed.values()):,.0f} |",
    ]
    for name in names:
        rs = [r["rows"][name] for r in per_seed.values()]
        lines.append(
            f"| {name} | {ms(table[name]['test_err'])} | {ms(table[name]['sparse_err'])} | "
            f"{ms(table[name]['weights_pruned'])} | {statistics.fmean(x['units_pruned'] for x in rs):.0f} | "
            f"{statistics.fmean(x['compact_params'] for x in rs):,.0f} |"
        )
    lines += ["", "Paired by seed (error of support pruning minus the other; negative: support pruning better):", ""]
    for k, v in verdicts.items():
        for key, d in v.items():
            lines.append(
                f"- {k}, {'after re-Dense' if key == 'test_err' else 'after the Sparse step'}: "
                f"{d['mean']:+.2f} ± {d['std']:.2f} points, better in "
                f"{d['seeds_ref_better']}/{len(d['diff_per_seed'])} seeds: {d['verdict']}"
            )
    return "\n".join(lines) + "\n", table, dense_err


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE))
    from convergence import git_commit, machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--dense-epochs", type=int, default=20, help="SGD epochs of the dense model (to convergence)")
    ap.add_argument("--epochs", default="4,4", help="E_s,E_r: Sparse and re-Dense epochs")
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--model", default="convnet-s")
    ap.add_argument("--support-i", action="store_true", help="also support-i and its two matched rows")
    ap.add_argument("--jobs", type=int, default=2, help="seeds in parallel processes (one thread each)")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, one seed, 2 dense epochs, 1+1 DSD epochs")
    ap.add_argument("--out", help="folder for everything (default bench/out/dsd; results into bench/results)")
    ap.add_argument("--set", action="append", default=[], help="extra config override (key=value)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.seeds, a.dense_epochs, a.epochs, a.jobs, a.subset, a.lr = "0", 3, "1,1", 1, 384, 0.1
    a.es, a.er = (int(x) for x in a.epochs.split(","))
    seeds = [int(s) for s in a.seeds.split(",")]
    a.out_dir = str(Path(a.out) if a.out else HERE / "out" / ("dsd-smoke" if a.smoke else "dsd"))
    command = "python bench/dsd_table.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])
    )
    t0 = time.time()
    if a.jobs > 1 and len(seeds) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=a.jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {s: ex.submit(seed_job, vars(a), s) for s in seeds}
            per_seed = {s: f.result() for s, f in futs.items()}
    else:
        per_seed = {s: seed_job(vars(a), s) for s in seeds}
    refs = ["DSD, support-b"] + (["DSD, support-i"] if a.support_i else [])
    verdicts = {
        f"{ref} vs {other}": compare(per_seed, ref, other)
        for ref in refs
        for other in (f"DSD, magnitude at {ref[5:]}'s sparsity", f"DSD, channel-L2 at {ref[5:]}'s sparsity")
    }
    md, table, dense_err = render(per_seed, verdicts, a, seeds)

    res = {
        "command": command.strip(),
        **git_commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "smoke": a.smoke,
        "seeds": seeds,
        "subset": a.subset,
        "model": a.model,
        "dense_epochs": a.dense_epochs,
        "sparse_epochs": a.es,
        "redense_epochs": a.er,
        "eps": a.eps,
        "lr": a.lr,
        "jobs": a.jobs,
        "per_seed": {str(s): r for s, r in per_seed.items()},
        "table": table,
        "dense_err": dense_err,
        "summary": summary(per_seed, table, dense_err),
        "paired": verdicts,
        "wall_seconds": time.time() - t0,
    }
    from supportnet.io import atomic_write_text

    dest = Path(a.out_dir) if (a.smoke or a.out) else HERE / "results"
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "dsd-equal-sparsity.json", json.dumps(res, indent=1))
    atomic_write_text(dest / "dsd-equal-sparsity.md", md)
    print(md)
    print(f"total {res['wall_seconds'] / 60:.1f} min; written {dest / 'dsd-equal-sparsity.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
