"""Where a training step's time goes, per method: torch.profiler over the steps of bench/overhead.py.

    python bench/profile_step.py [--steps 10] [--top 12] [--subset 2560] [--device cpu|cuda]

The same setup and step as bench/overhead.py (convnet-s, Fashion-MNIST, batch 128; each
method's supports handed by its schedule, I-alt with its consistency penalty). For each of
SGD, B-alt, I-alt (stored) and the support-estimation pass, prints the top ops by self time
(milliseconds per step, calls per step) and, for the alternation methods, the ops whose time
differs most from SGD's: what separates the method from SGD. Writes bench/out/profile_step.json.
Profiles are for attribution, not timing: the profiler adds its own cost to every op.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import OUT, Bench  # noqa: E402

METHODS = ("sgd", "b-alt", "i-alt-stored")


def _table(prof, per: int, cuda: bool) -> dict[str, dict]:
    """``{op: {self_ms, calls}}`` per step (self CPU time; self device time on CUDA as well)."""
    out = {}
    for e in prof.key_averages():
        row = {"self_ms": e.self_cpu_time_total / 1e3 / per, "calls": e.count / per}
        if cuda:
            row["self_device_ms"] = getattr(e, "self_device_time_total", 0.0) / 1e3 / per
        out[e.key] = row
    return out


def _print_top(title: str, table: dict, top: int, key: str = "self_ms") -> None:
    total = sum(r[key] for r in table.values())
    print(f"\n== {title}: {total:.2f} ms of self time per step ({key})")
    print(f"{'op':<48} {'ms/step':>9} {'calls/step':>11}")
    for name, r in sorted(table.items(), key=lambda kv: -kv[1][key])[:top]:
        print(f"{name[:48]:<48} {r[key]:>9.3f} {r['calls']:>11.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--subset", type=int, default=2560)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    bench = Bench(a.data, a.subset, a.batch_size, a.steps, a.device, kinds=METHODS)
    cuda = bench.dev.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_ms" if cuda else "self_ms"
    for k in METHODS:  # warm-up
        bench.run(k)
    res: dict = {"device": a.device, "torch": torch.__version__, "steps": a.steps, "methods": {}}
    for k in METHODS:
        with profile(activities=acts) as prof:
            bench.run(k)
        res["methods"][k] = _table(prof, len(bench.batch_list), cuda)
        _print_top(k, res["methods"][k], a.top, key)
    sgd = res["methods"]["sgd"]
    for k in METHODS[1:]:
        diff = {
            n: {"self_ms": r.get(key, 0.0) - sgd.get(n, {}).get(key, 0.0), "calls": r["calls"]}
            for n, r in res["methods"][k].items()
        }
        res["methods"][k + " minus sgd"] = diff
        _print_top(f"{k} minus sgd", {n: r for n, r in diff.items() if r["self_ms"] > 0}, a.top)
    sched = bench.scheds["i-alt-stored"]  # the estimation pass, per batch of the eval batch size
    n_batches = -(-len(bench.train) // sched.eval_batch_size)
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        sched.reestimate()
    wall = time.perf_counter() - t
    res["estimation"] = _table(prof, n_batches, cuda)
    res["estimation_seconds_profiled"] = wall
    _print_top(f"estimation pass, per batch of {sched.eval_batch_size}", res["estimation"], a.top, key)
    OUT.mkdir(exist_ok=True)
    (OUT / "profile_step.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
