"""Per-step overhead of the alternation methods, as ratios to a free SGD step, in one process.

    python bench/overhead.py [--data fashion-mnist] [--subset 12800] [--steps 10] [--repeats 21]

Measures, with the methods interleaved and the median over repeats:
  * B-alt step / SGD step, I-alt (stored) step / SGD step, I-alt (snapshot) step / SGD step;
  * one support-estimation pass / one training epoch (same examples);
  * MaskStore bytes per activation;
  * supportnet's fit() loop against a minimal hand-written PyTorch loop (the framework tax).
Writes bench/out/overhead.json and bench/out/overhead.png and prints a Markdown table.
A benchmark, not a test: the machine is shared, so only ratios measured in one run are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from supportnet.alternation import IAlternation
from supportnet.config import METHOD_DEFAULTS, SupportConfig, load_config
from supportnet.data import batches, epoch_order, load_data
from supportnet.layers import configure, record_masks, set_instance_masks, support_penalty
from supportnet.models import create_model
from supportnet.train import fit

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--subset", type=int, default=12800)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=21, help="interleaved blocks per method (median kept)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (data resident on the device)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    data = load_data(a.data, subset=a.subset)
    if dev.type != "cpu":
        from supportnet.train import to_device

        data = to_device(data, dev)
    train = data.train
    model = create_model("convnet-s", data.in_shape, data.num_classes).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    bs = a.batch_size
    order = epoch_order(len(train), 0, 0)
    batch_list = list(batches(train, bs, order))[: a.steps]

    # Supports for the I-alt back ends, estimated once from the current weights.
    ialt_stored = IAlternation(SupportConfig(method="i-alt", backend="stored", warmup=0), model, train, dev)
    ialt_stored.start_epoch(0)  # the first estimation also warms up; time the second
    est_times = []
    for _ in range(3):  # the median of three passes (the first estimation above warmed up)
        sync()
        t0 = time.perf_counter()
        ialt_stored.reestimate()
        sync()
        est_times.append(time.perf_counter() - t0)
    est_seconds = statistics.median(est_times)
    ialt_snap = IAlternation(SupportConfig(method="i-alt", backend="snapshot", warmup=0), model, train, dev)
    ialt_snap.start_epoch(0)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        objective = loss + support_penalty(model) if penalised else loss  # as fit() does
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()

    # Each method with its own defaults (config.METHOD_DEFAULTS): I-alt's support-consistency
    # penalty (weight 1.0) is part of its step; SGD and B-alt have none.
    penalised = False

    def run(kind: str) -> float:
        nonlocal penalised
        model.train()
        consistency = METHOD_DEFAULTS["i-alt" if kind.startswith("i-alt") else kind]["consistency"]
        penalised = consistency > 0
        if kind == "sgd":
            configure(model, mode="free", consistency=consistency)
        elif kind == "b-alt":
            configure(model, mode="batch", apply="gated", rule="energy-rel", beta=0.1, consistency=consistency)
        else:
            configure(model, mode="instance", apply="gated", consistency=consistency)
        sync()
        t = time.perf_counter()
        for x, y, idx in batch_list:
            if kind == "i-alt-stored":
                set_instance_masks(model, ialt_stored.store.read(idx, device=dev))
            elif kind == "i-alt-snapshot":
                set_instance_masks(model, record_masks(ialt_snap.snapshot, x))
            step(x, y)
        sync()
        return (time.perf_counter() - t) / len(batch_list)

    kinds = ["sgd", "b-alt", "i-alt-stored", "i-alt-snapshot"]
    for k in kinds:  # warm-up
        run(k)
    times = {k: [] for k in kinds}
    for _ in range(a.repeats):
        for k in kinds:  # interleaved, so drift in machine load hits every method alike
            times[k].append(run(k))
    med = {k: statistics.median(v) for k, v in times.items()}

    # Estimation pass vs one epoch of free SGD steps over the same examples.
    configure(model, mode="free")
    epoch_est = med["sgd"] * -(-len(train) // bs)  # one epoch of free SGD steps

    # Framework tax: fit() (training time only) vs a hand-written loop, same model, data, order.
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [
                f"data.name={a.data}",
                f"data.subset={a.subset}",
                "train.epochs=1",
                "quiet=true",
                f"out={tmp}",
                "train.train_eval_size=0",
                "train.checkpoint_every=0",
                "train.schedule=constant",
                f"train.device={a.device}",
                f"train.loader={'device' if dev.type != 'cpu' else 'host'}",
            ],
        )
        taxes = []
        for _ in range(max(1, a.repeats // 2)):
            run_dir = fit(cfg, data=data)
            fit_s = json.loads((run_dir / "summary.json").read_text())["seconds"]
            torch.manual_seed(0)
            hand = create_model("convnet-s", data.in_shape, data.num_classes, act_layer=nn.ReLU).to(dev)
            hopt = torch.optim.SGD(hand.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            sync()
            t = time.perf_counter()
            perm = epoch_order(len(train), 0, 0)
            for i in range(0, len(train), bs):
                idx = perm[i : i + bs]
                loss = F.cross_entropy(hand(train.x[idx]), train.y[idx])
                hopt.zero_grad(set_to_none=True)
                loss.backward()
                hopt.step()
            sync()
            hand_s = time.perf_counter() - t
            taxes.append(fit_s / hand_s)
    store = ialt_stored.store
    machine = (
        f"{torch.cuda.get_device_name(dev)} torch {torch.__version__}"
        if dev.type == "cuda"
        else f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__} "
        f"threads {torch.get_num_threads()}".strip()
    )
    res = {
        "machine": machine,
        "device": a.device,
        "data": a.data,
        "subset": a.subset,
        "batch_size": bs,
        "steps": a.steps,
        "repeats": a.repeats,
        "seconds_per_step": med,
        "b_alt_step_over_sgd": med["b-alt"] / med["sgd"],
        "i_alt_stored_step_over_sgd": med["i-alt-stored"] / med["sgd"],
        "i_alt_snapshot_step_over_sgd": med["i-alt-snapshot"] / med["sgd"],
        "estimation_pass_over_epoch": est_seconds / epoch_est,
        "maskstore_bits_per_activation": store.bits_per_activation(),
        "framework_tax": statistics.median(taxes) - 1.0,
    }
    OUT.mkdir(exist_ok=True)
    suffix = "" if dev.type == "cpu" else f"-{dev.type}"
    (OUT / f"overhead{suffix}.json").write_text(json.dumps(res, indent=2))
    rows = [
        ("B-alt step / SGD step", res["b_alt_step_over_sgd"], "≤ 1.05"),
        ("I-alt (stored) step / SGD step", res["i_alt_stored_step_over_sgd"], "≤ 1.10"),
        ("I-alt (snapshot) step / SGD step", res["i_alt_snapshot_step_over_sgd"], "–"),
        ("Estimation pass / epoch", res["estimation_pass_over_epoch"], "≤ 0.40"),
        ("MaskStore bits per activation", res["maskstore_bits_per_activation"], "≤ 1.01"),
        ("Framework tax (fit / hand loop − 1)", res["framework_tax"], "≤ 0.05"),
    ]
    print(f"machine: {res['machine']}; {a.data} subset {a.subset}, batch {bs}, median of {a.repeats}")
    print("| figure | measured | target |\n|---|---:|---|")
    for name, v, target in rows:
        print(f"| {name} | {v:.3f} | {target} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([r[0] for r in rows[:4]], [r[1] for r in rows[:4]])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("ratio")
    ax.set_title(f"supportnet overhead ({res['machine']})", fontsize=8)
    fig.savefig(OUT / f"overhead{suffix}.png", dpi=90, bbox_inches="tight")


if __name__ == "__main__":
    main()
