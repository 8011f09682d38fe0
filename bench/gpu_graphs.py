"""Where a CUDA graph of the training step pays: steps/s of a hand loop, eager against captured.

    python bench/gpu_graphs.py [--models convnet-s,allcnn-c] [--steps 50] [--repeats 5] [--out DIR]
                               [--fit-data fashion-mnist] [--fit-epochs 2] [--no-fit]

One process, one device. Per model and method (SGD, B-alt, I-alt stored with its penalty), the
same step function -- fit()'s ``train_step`` under bf16 autocast (channels_last) with its device
divergence guard, fused SGD with the learning rate as a device tensor, the loss summed on the
device -- runs eagerly and through :class:`supportnet.cuda_graphs.GraphedStep`, the two
interleaved and the median of ``--repeats`` timed blocks kept. I-alt stored hands each step's
packed rows (gathered from the store's copy on the device) to the graph as an input. Data:
synthetic, resident on the device. The weights after the two runs are compared (they start
equal and see the same batches).

Then the same question for fit() itself: convnet-s trained by ``fit()`` on ``--fit-data`` (resident
on the device, bf16 + channels_last) for ``--fit-epochs`` epochs, SGD, B-alt and I-alt stored (one
warm-up epoch), with ``train.cuda_graphs`` false and true; the last epoch's training seconds
(metrics.csv, evaluation out) and the final test accuracy of each.

Writes ``gpu_graphs.json`` into ``--out`` (default bench/out) and prints Markdown tables. A
benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from convergence import make_out  # bench/ is the script's folder, first on sys.path

from supportnet.alternation import BAlternation, IAlternation
from supportnet.config import SupportConfig
from supportnet.cuda_graphs import GraphedStep
from supportnet.data import Split
from supportnet.data.registry import DATASETS
from supportnet.guard import DivergenceGuard
from supportnet.layers import configure, set_instance_masks
from supportnet.masks import PackedMasks
from supportnet.models import create_model
from supportnet.train import train_step

OUT = Path(__file__).resolve().parent / "out"
SHAPES = {"convnet-s": (1, 28, 28), "allcnn-c": (3, 32, 32)}
METHODS = ("sgd", "b-alt", "i-alt-stored")


def _setup(name: str, method: str, batch: int, dev: torch.device):
    """The model, its step function and the per-step inputs of ``method``."""
    torch.manual_seed(0)
    shape = SHAPES[name]
    model = create_model(name, shape, 10).to(dev).to(memory_format=torch.channels_last)
    n = batch * 8
    x_all = torch.randn(n, *shape, device=dev).contiguous(memory_format=torch.channels_last)
    y_all = torch.randint(0, 10, (n,), device=dev)
    lr = torch.tensor(0.01, device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, fused=True)
    guard = DivergenceGuard(model, opt, dev, lazy=True)  # fit()'s device guard: the fused step skips while set
    acc = torch.zeros((), dtype=torch.float64, device=dev)
    split = Split(x_all, y_all)
    shapes = None
    if method == "b-alt":
        BAlternation(SupportConfig(method="b-alt", warmup=0), model, split, dev).start_epoch(0)
    store = None
    if method == "i-alt-stored":
        sched = IAlternation(SupportConfig(method="i-alt", backend="stored", warmup=0), model, split, dev)
        sched.start_epoch(0)
        store, shapes = sched.store, sched.store.shapes
        store.to_device(dev)
        configure(model, consistency=1.0)
    penalised = method == "i-alt-stored"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)

    def step(x, y, *rows):
        if rows:
            set_instance_masks(model, PackedMasks(rows[0], shapes))
        loss = train_step(model, opt, x, y, penalised=penalised, guard=guard, autocast=autocast)  # fit()'s step
        acc.add_(loss.double(), alpha=y.numel())

    def inputs(i):
        j = (i % 8) * batch
        args = [x_all[j : j + batch], y_all[j : j + batch]]
        if store is not None:
            args.append(store.read(torch.arange(j, j + batch), device=dev, packed=True).rows)
        return args

    return model, step, inputs, acc


def _time(run, inputs, steps: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        run(*inputs(i))
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def bench(name: str, method: str, batch: int, steps: int, repeats: int, dev: torch.device) -> dict:
    eager = _setup(name, method, batch, dev)
    graphed = _setup(name, method, batch, dev)
    runner = GraphedStep(graphed[1], warmup=3)
    for run, s in ((eager[1], eager), (runner, graphed)):
        _time(run, s[2], 5)  # warm-up: cuDNN plans, kernels compiled, the graph captured
    rates: dict[str, list[float]] = {"eager": [], "graph": []}
    for _ in range(repeats):
        rates["eager"].append(_time(eager[1], eager[2], steps))
        rates["graph"].append(_time(runner, graphed[2], steps))
    diff = max((a - b).abs().max().item() for a, b in zip(eager[0].parameters(), graphed[0].parameters()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "model": name,
        "method": method,
        "batch": batch,
        "steps_per_s": med,
        "runs": rates,
        "graph_speedup": med["graph"] / med["eager"],
        "replays": runner.replays,
        "max_weight_difference": diff,
        "loss_sums": [eager[3].item(), graphed[3].item()],
    }


FIT_METHODS = {"sgd": ["support.method=sgd"], "b-alt": ["support.method=b-alt", "support.warmup=1"],
               "i-alt-stored": ["support.method=i-alt", "support.backend=stored", "support.warmup=1"]}  # fmt: skip


def fit_rows(data_name: str, epochs: int, out: Path) -> list[dict]:
    """fit() eager against fit() with train.cuda_graphs=true: the last epoch's training seconds."""
    import csv

    from supportnet.config import load_config
    from supportnet.data import load_data
    from supportnet.train import fit

    data = load_data(data_name)
    rows = []
    for method, sets in FIT_METHODS.items():
        row: dict = {"method": method, "data": data_name, "epochs": epochs}
        try:
            for graphs in (False, True):
                name = "graph" if graphs else "eager"
                cfg = load_config(None, [f"data.name={data_name}", "model.name=convnet-s", f"train.epochs={epochs}",
                                         "train.device=cuda", "train.loader=device", "train.amp=bf16",
                                         "train.channels_last=true", "train.train_eval_size=0", "quiet=true",
                                         f"train.cuda_graphs={str(graphs).lower()}", f"out={out / method / name}",
                                         *sets])  # fmt: skip
                run = fit(cfg, data=data, overwrite=True)
                m = list(csv.DictReader((run / "metrics.csv").open()))  # seconds: training time so far
                row[name] = {"last_epoch_seconds": float(m[-1]["seconds"]) - float(m[-2]["seconds"]),
                             "test_acc": float(m[-1]["test_acc"])}  # fmt: skip
            row["graph_speedup"] = row["eager"]["last_epoch_seconds"] / row["graph"]["last_epoch_seconds"]
        except Exception as e:  # noqa: BLE001 - report it, keep the other rows
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="convnet-s,allcnn-c")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--fit-data", default="fashion-mnist", help="data set of the fit() rows")
    ap.add_argument("--fit-epochs", type=int, default=2)
    ap.add_argument("--no-fit", action="store_true", help="skip the fit() rows")
    a = ap.parse_args()
    unknown = sorted(set(a.models.split(",")) - set(SHAPES))
    if unknown:
        ap.error(f"--models takes {','.join(SHAPES)} (got {','.join(unknown)})")
    if a.steps < 1 or a.repeats < 1 or a.batch < 1 or a.fit_epochs < 2:
        ap.error("--steps, --repeats and --batch need at least 1, --fit-epochs at least 2 (the first warms up)")
    if not a.no_fit and a.fit_data not in DATASETS:
        ap.error(f"--fit-data takes one of {', '.join(DATASETS)} (got {a.fit_data})")
    make_out(ap, a.out)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_graphs.py: error: needs a CUDA device; run it on a GPU machine")
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    rows = []
    for name in a.models.split(","):
        for method in METHODS:
            try:
                rows.append(bench(name, method, a.batch, a.steps, a.repeats, dev))
            except Exception as e:  # noqa: BLE001 - report it, keep the other rows
                rows.append({"model": name, "method": method, "error": f"{type(e).__name__}: {str(e)[:400]}"})
            print(json.dumps(rows[-1]), flush=True)
    res = {"device": f"{torch.cuda.get_device_name()} (torch {torch.__version__})", "rows": rows, "fit": []}
    (a.out / "gpu_graphs.json").write_text(json.dumps(res, indent=1))  # the hand loop's rows, kept if fit fails
    if not a.no_fit:
        res["fit"] = fit_rows(a.fit_data, a.fit_epochs, a.out / "fit-runs")
        (a.out / "gpu_graphs.json").write_text(json.dumps(res, indent=1))
    print(f"device: {res['device']}")
    _table("| model | method | eager steps/s | graph steps/s | graph / eager | max weight diff |", rows,
           lambda r: [r["model"], r["method"], f"{r['steps_per_s']['eager']:.0f}", f"{r['steps_per_s']['graph']:.0f}",
                      f"{r['graph_speedup']:.2f}", f"{r['max_weight_difference']:.2e}"])  # fmt: skip
    if res["fit"]:
        print()
        _table("| fit(), convnet-s | last epoch s, eager | with cuda_graphs | eager / graph | test acc eager | graph |",
               res["fit"], lambda r: [r["method"], f"{r['eager']['last_epoch_seconds']:.2f}",
                                      f"{r['graph']['last_epoch_seconds']:.2f}", f"{r['graph_speedup']:.2f}",
                                      f"{r['eager']['test_acc']:.4f}", f"{r['graph']['test_acc']:.4f}"])  # fmt: skip


def _table(head: str, rows: list[dict], cells) -> None:
    """A Markdown table: ``head``, then ``cells(row)`` per row (a failed row: its names and its error)."""
    n = head.count("|") - 1
    print(head)
    print("|---|" + "---:|" * (n - 1))
    for r in rows:
        names = [r[k] for k in ("model", "method") if k in r]
        row = cells(r) if "error" not in r else [*names, f"failed: {r['error'][:120]}"]
        print("| " + " | ".join(row + [""] * (n - len(row))) + " |")


if __name__ == "__main__":
    main()
