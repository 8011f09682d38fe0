"""Training throughput (images/s) and peak memory of SGD, B-alternation and I-alternation on one device.

    python bench/gpu_throughput.py [--device cuda] [--quick] [--compile] [--fast-only] [--profile] [--out DIR]

Synthetic data resident on the device (the device loader). Per model, each method
is timed fp32 and with the fast path (bf16 autocast + channels_last), the methods
interleaved and the median of repeats kept; ratios are to SGD in the same setting.
Methods: SGD, B-alt, I-alt stored (supports estimated once into a MaskStore, handed to the
layers by the schedule as fit() does: packed rows read by the Triton kernels when triton is
installed; with its consistency penalty, as fit() trains it) and I-alt snapshot (without the
penalty, as in the earlier tables). Peak memory: torch.cuda.max_memory_allocated over each
method's steps (the model, the optimizer and the resident data included).
Models: allcnn-c on 3x32x32 with batch 256; resnet18 on 3x224x224 with batch 128.
With ``--profile``, each method's top device kernels by self time (torch.profiler, 3 steps).
Writes gpu_throughput.json into ``--out`` (default bench/out) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from convergence import make_out  # bench/ is the script's folder, first on sys.path

from supportnet import kernels
from supportnet.alternation import BAlternation, IAlternation
from supportnet.config import SupportConfig
from supportnet.data import Split
from supportnet.layers import configure, record_masks, set_instance_masks, support_penalty
from supportnet.models import create_model

OUT = Path(__file__).resolve().parent / "out"


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def bench_model(
    name, shape, batch, steps, warm, repeats, dev, fast, use_compile=False, profile=False, bf16=True
) -> dict:
    """One model's images per second under each method. ``fast``: channels_last, and bf16 autocast
    unless ``bf16`` is False (``--quick`` on a CPU: there bf16 convolutions take a reference path ~10x
    slower than fp32, which made the smoke run of bench/gpu_check.sh take 8 minutes)."""
    torch.manual_seed(0)
    model = create_model(name, shape, 10).to(dev)
    fmt = torch.channels_last if fast else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x_all = torch.randn(batch * 4, *shape, device=dev).contiguous(memory_format=fmt)
    y_all = torch.randint(0, 10, (batch * 4,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    net = torch.compile(model) if use_compile else model
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if fast and bf16 else nullcontext
    split = Split(x_all, y_all)
    balt = BAlternation(SupportConfig(method="b-alt", warmup=0), model, split, dev)
    stored = IAlternation(SupportConfig(method="i-alt", backend="stored", warmup=0), model, split, dev)
    stored.start_epoch(0)  # estimates the supports of the 4 batches
    snapshot = copy.deepcopy(model).eval()
    index = torch.arange(batch * 4)

    def step(i, penalised):
        j = (i % 4) * batch
        x, y = x_all[j : j + batch], y_all[j : j + batch]
        with amp():
            loss = F.cross_entropy(net(x), y)
        objective = loss.float() + support_penalty(model) if penalised else loss
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()

    def run(kind, n):
        configure(model, consistency=1.0 if kind == "i-alt-stored" else 0.0)
        if kind == "sgd":
            configure(model, mode="free")
        elif kind == "b-alt":
            balt.start_epoch(0)
        else:
            configure(model, mode="instance", apply="gated")
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        for i in range(n):
            j = (i % 4) * batch
            if kind == "i-alt-snapshot":
                with amp():
                    set_instance_masks(model, record_masks(snapshot, x_all[j : j + batch]))
            elif kind == "i-alt-stored":
                stored.before_step(x_all[j : j + batch], index[j : j + batch])
            step(i, kind == "i-alt-stored")
        sync()
        return batch * n / (time.perf_counter() - t)

    kinds = ["sgd", "b-alt", "i-alt-stored", "i-alt-snapshot"]
    t0 = time.perf_counter()
    for k in kinds:
        run(k, warm)
    compile_s = time.perf_counter() - t0
    ips, peak = {k: [] for k in kinds}, dict.fromkeys(kinds, 0)
    for _ in range(repeats):
        for k in kinds:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            ips[k].append(run(k, steps))
            peak[k] = max(peak[k], torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0)
    med = {k: statistics.median(v) for k, v in ips.items()}
    prof = {k: top_kernels(lambda k=k: run(k, 3), 3, dev) for k in kinds} if profile else None
    return {
        "model": name,
        "input": "x".join(map(str, shape)),
        "batch": batch,
        "fast_path": fast,
        "bf16": fast and bf16,
        "compile": use_compile,
        "warmup_seconds": round(compile_s, 2),
        "images_per_s": med,
        "ratio_to_sgd": {k: med[k] / med["sgd"] for k in kinds},
        "peak_memory_bytes": peak,
        "peak_memory_ratio_to_sgd": {k: peak[k] / peak["sgd"] if peak["sgd"] else float("nan") for k in kinds},
        "store_bytes": stored.store.nbytes,
        "store_on_device": stored.store._device_payload is not None,
        "kernels": kernels.enabled(dev),
        "profile_top_kernels_ms_per_step": prof,
    }


def top_kernels(fn, steps: int, dev: torch.device, top: int = 12) -> list[list]:
    """``[name, ms per step, calls per step]`` of the ``top`` device kernels (CPU ops on a CPU) by self
    time over ``fn()``, which runs ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as p:
        fn()
        if cuda:
            torch.cuda.synchronize()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    evs = sorted(p.key_averages(), key=lambda e: getattr(e, attr, 0.0), reverse=True)
    return [[e.key[:90], round(getattr(e, attr, 0.0) / 1000 / steps, 4), e.count / steps] for e in evs[:top]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, fp32 on a CPU (a smoke run)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on allcnn-c")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fast-only", action="store_true", help="only bf16 + channels_last (skip fp32)")
    ap.add_argument("--profile", action="store_true", help="also record each method's top device kernels")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for gpu_throughput.json (default bench/out)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    plan = [("allcnn-c", (3, 32, 32), 256, 30, 10), ("resnet18", (3, 224, 224), 128, 15, 5)]
    if a.quick:
        plan = [("allcnn-c", (3, 32, 32), 16, 2, 1), ("resnet18", (3, 32, 32), 4, 2, 1)]
    bf16 = not (a.quick and dev.type == "cpu")  # see bench_model
    rows: list[dict] = []
    res = {"device": device_name(dev), "rows": rows}
    make_out(ap, a.out)
    for name, shape, batch, steps, warm in plan:
        for fast in (True,) if a.fast_only else (False, True):
            try:
                rows.append(
                    bench_model(name, shape, batch, steps, warm, a.repeats, dev, fast, profile=a.profile, bf16=bf16)
                )
            except Exception as e:  # noqa: BLE001 - report it, keep the other rows
                rows.append({"model": name, "fast_path": fast, "error": f"{type(e).__name__}: {str(e)[:400]}"})
            print(json.dumps(rows[-1]), flush=True)
            (a.out / "gpu_throughput.json").write_text(json.dumps(res, indent=1))  # each row as it is done
    if a.compile:
        name, shape, batch, steps, warm = plan[0]
        try:
            rows.append(bench_model(name, shape, batch, steps, warm, a.repeats, dev, True, use_compile=True))
            print(json.dumps(rows[-1]), flush=True)
        except Exception as e:  # noqa: BLE001 - report, do not lose the other figures
            rows.append({"model": name, "compile": True, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    (a.out / "gpu_throughput.json").write_text(json.dumps(res, indent=1))
    print(f"device: {res['device']}")
    print(
        "| model | input | batch | precision | kernels | SGD img/s | B-alt img/s (÷SGD) | I-alt stored img/s (÷SGD) "
        "| I-alt snapshot img/s (÷SGD) | peak memory ÷ SGD: B-alt / I-alt stored / snapshot |"
    )
    print("|---|---|---:|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | failed: {r['error']} |")
            continue
        p = ("bf16 + channels_last" if r.get("bf16") else "channels_last" if r["fast_path"] else "fp32") + (
            " + compile" if r["compile"] else ""
        )
        ips, rat, mem = r["images_per_s"], r["ratio_to_sgd"], r["peak_memory_ratio_to_sgd"]
        print(
            f"| {r['model']} | {r['input']} | {r['batch']} | {p} | {'triton' if r['kernels'] else 'torch'} | "
            f"{ips['sgd']:.0f} | {ips['b-alt']:.0f} ({rat['b-alt']:.2f}) | {ips['i-alt-stored']:.0f} "
            f"({rat['i-alt-stored']:.2f}) | {ips['i-alt-snapshot']:.0f} ({rat['i-alt-snapshot']:.2f}) | "
            f"{mem['b-alt']:.2f} / {mem['i-alt-stored']:.2f} / {mem['i-alt-snapshot']:.2f} |"
        )


if __name__ == "__main__":
    main()
