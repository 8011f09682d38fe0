"""Per-step overhead of the alternation methods, as ratios to a free SGD step, in one process.

    python bench/overhead.py [--data fashion-mnist] [--subset 12800] [--steps 10] [--repeats 21]
                             [--device cpu|cuda] [--quick] [--no-memory] [--no-tax]

Prints every figure of the overhead table (docs/performance.md) in one run (convnet-s, batch 128), with the methods
interleaved and the median over repeats kept:
  * B-alt step / SGD step, I-alt (stored) step / SGD step (with its consistency penalty, as fit()
    trains it), I-alt (snapshot) step / SGD step;
  * one support-estimation pass / one training epoch (same examples);
  * MaskStore bits per activation;
  * supportnet's fit() loop against a minimal hand-written PyTorch loop (the framework tax);
  * peak memory per method. On the CPU each method's steps run in a child process of their own
    and the peak is the resident set's high-water mark (VmHWM, reset just before the steps;
    ru_maxrss where it cannot be reset): it counts every allocation, numpy's mask buffers and
    the store included, which the torch profiler's accounting does not see, and one method's
    peak cannot hide another's. "step memory" is that peak less the resident set just before
    the steps (what the steps themselves need). On CUDA, torch.cuda.max_memory_allocated over
    each method's steps. The stored back end's MaskStore and the snapshot back end's second
    model are resident before the steps; their sizes are reported beside.
Writes bench/out/overhead[-cuda].json (``--out`` another folder), with the command and the commit,
and prints a Markdown table.
A benchmark, not a test: run it alone on the machine; only ratios measured in one run are reported.

The training step is the library's :func:`~supportnet.train.train_step`, the supports handed to the layers by each
method's schedule (``before_step``) as fit() does.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from convergence import git_commit, make_out  # bench/ is the script's folder, first on sys.path
from convergence import machine as bench_machine
from torch import nn

from supportnet.allocator import tune_allocator
from supportnet.alternation import make_schedule
from supportnet.config import METHOD_DEFAULTS, SupportConfig, load_config
from supportnet.data import batches, epoch_order, load_data
from supportnet.kernels import cpu as cpu_kernels
from supportnet.layers import configure
from supportnet.models import create_model
from supportnet.train import fit, train_step

OUT = Path(__file__).resolve().parent / "out"
KINDS = ("sgd", "b-alt", "i-alt-stored", "i-alt-snapshot")
SUPPORT = {
    "sgd": SupportConfig(method="sgd"),
    "b-alt": SupportConfig(method="b-alt", warmup=0),
    "i-alt-stored": SupportConfig(method="i-alt", backend="stored", warmup=0),
    "i-alt-snapshot": SupportConfig(method="i-alt", backend="snapshot", warmup=0),
}
TARGETS = {  # the overhead table's targets (docs/performance.md): (CPU, GPU)
    "b_alt_step_over_sgd": ("≤ 1.05", "≤ 1.07"),
    "i_alt_stored_step_over_sgd": ("≤ 1.10", "≤ 1.10"),
    "i_alt_snapshot_step_over_sgd": ("–", "–"),
    "estimation_pass_over_epoch": ("≤ 0.35", "≤ 0.35"),
    "maskstore_bits_per_activation": ("≤ 1.01", "≤ 1.01"),
    "framework_tax": ("≤ 0.03", "≤ 0.05"),
    "framework_tax_of_minimums": ("≤ 0.03", "≤ 0.05"),
}


def step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, penalised: bool) -> None:
    """One training step: the library's own :func:`supportnet.train.train_step` (forward, the
    objective with the support-consistency penalty where the method has one, backward, update),
    without the divergence guard, which costs every method the same."""
    train_step(model, opt, x, y, penalised=penalised)


class Bench:
    """convnet-s, its optimizer, a few training batches and one schedule per method in ``kinds``
    (the I-alternation ones with their supports estimated once from the initial weights)."""

    def __init__(self, data: str, subset: int, batch_size: int, steps: int, device: str, kinds=KINDS):
        tune_allocator()  # as fit() and supportnet.alternation() do
        self.dev = torch.device(device)
        self.sync = torch.cuda.synchronize if self.dev.type == "cuda" else (lambda: None)
        torch.manual_seed(0)
        self.data = load_data(data, subset=subset)
        if self.dev.type != "cpu":
            from supportnet.train import to_device

            self.data = to_device(self.data, self.dev)
        self.train = self.data.train
        self.model = create_model("convnet-s", self.data.in_shape, self.data.num_classes).to(self.dev)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.batch_size = batch_size
        order = epoch_order(len(self.train), 0, 0)
        self.batch_list = list(batches(self.train, batch_size, order))[:steps]
        self.scheds = {}
        for k in kinds:
            self.scheds[k] = make_schedule(SUPPORT[k], self.model, self.train, self.dev)
            if k.startswith("i-alt"):
                self.scheds[k].start_epoch(0)  # estimates the supports (and warms up the estimation)

    def prepare(self, kind: str) -> bool:
        """Put the layers in ``kind``'s phase with its own penalty weight; True if penalised."""
        self.model.train()
        self.scheds[kind].start_epoch(0)
        consistency = METHOD_DEFAULTS[SUPPORT[kind].method]["consistency"]
        configure(self.model, consistency=consistency)  # (each schedule set it on the shared model)
        return consistency > 0

    def run(self, kind: str) -> float:
        """Seconds per step of ``kind`` over the batch list."""
        penalised = self.prepare(kind)
        sched = self.scheds[kind]
        self.sync()
        t = time.perf_counter()
        for x, y, idx in self.batch_list:
            sched.before_step(x, idx)
            step(self.model, self.opt, x, y, penalised)
        self.sync()
        return (time.perf_counter() - t) / len(self.batch_list)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_child(a) -> None:
    """(In a child process) one method's steps; prints its peak resident memory as JSON."""
    kind = a.memory_child
    bench = Bench(a.data, a.subset, a.batch_size, a.steps, "cpu", kinds=(kind,))
    gc.collect()
    try:  # reset the high-water mark (Linux >= 4.0), so the setup's own peak does not count
        Path("/proc/self/clear_refs").write_text("5")
        how = "VmHWM (reset before the steps)"
    except OSError:
        how = "ru_maxrss"
    base = _status_kb("VmRSS")
    for _ in range(3):  # the first run creates the optimizer's momentum: part of training's footprint
        bench.run(kind)
    peak = _status_kb("VmHWM") if how.startswith("VmHWM") else None
    peak = peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = {"kind": kind, "peak_bytes": peak * 1024, "step_bytes": (peak - (base or 0)) * 1024, "how": how}
    sched = bench.scheds[kind]
    if kind == "i-alt-stored":
        res["store_bytes"] = sched.store.nbytes
    if kind == "i-alt-snapshot":
        res.update(snapshot_costs(sched))
    print(json.dumps(res))


def snapshot_costs(sched) -> dict:
    """What the snapshot back end holds beside the model: the frozen copy and its packed probe supports."""
    snap = sched.snapshot
    return {
        "snapshot_model_bytes": sum(t.numel() * t.element_size() for t in snap.state_dict().values()),
        "probe_bytes": int(sched._probe_prev.nbytes),
    }


def cpu_memory(a) -> dict:
    """Peak memory of each method, each in a child process."""
    out = {}
    for kind in KINDS:
        cmd = [sys.executable, __file__, "--memory-child", kind, "--data", a.data, "--subset", str(a.subset)]
        cmd += ["--steps", str(a.steps), "--batch-size", str(a.batch_size)]
        # every block of 64 KiB or more mmap'd and returned on free: the resident set follows the
        # live memory instead of glibc's retained heap (the child is not timed)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def cuda_memory(bench: Bench) -> dict:
    out = {}
    for kind in KINDS:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        bench.run(kind)
        peak = torch.cuda.max_memory_allocated()
        out[kind] = {"kind": kind, "peak_bytes": peak, "step_bytes": peak - base, "how": "max_memory_allocated"}
    store = bench.scheds["i-alt-stored"].store
    out["i-alt-stored"]["store_bytes"] = store.nbytes
    out["i-alt-stored"]["store_on_device"] = store._device_payload is not None  # (then in peak_bytes too)
    out["i-alt-snapshot"].update(snapshot_costs(bench.scheds["i-alt-snapshot"]))
    return out


def _hand_epoch(bench: Bench, bs: int) -> float:
    """Seconds of one epoch of a minimal hand-written PyTorch loop (plain ReLU convnet-s, the
    same data, order, batch and optimizer settings as fit()'s)."""
    data, train = bench.data, bench.train
    torch.manual_seed(0)
    hand = create_model("convnet-s", data.in_shape, data.num_classes, act_layer=nn.ReLU).to(bench.dev)
    hopt = torch.optim.SGD(hand.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    bench.sync()
    t = time.perf_counter()
    perm = epoch_order(len(train), 0, 0)
    for i in range(0, len(train), bs):
        idx = perm[i : i + bs]
        loss = F.cross_entropy(hand(train.x[idx]), train.y[idx])
        hopt.zero_grad(set_to_none=True)
        loss.backward()
        hopt.step()
    bench.sync()
    return time.perf_counter() - t


def framework_tax(a, bench: Bench) -> dict:
    """fit() (its training seconds) against a hand-written loop on the same model, data and order.

    ``a.tax_repeats`` pairs, the order flipped every pair (fit first, then the hand loop first),
    so a slow stretch of a shared machine, which lasts seconds, falls on either side alike.
    ``tax``: the median over pairs of fit / hand - 1; ``tax_of_minimums``: the fastest fit()
    over the fastest hand loop, less 1 (a machine's noise only ever adds time)."""
    dev = bench.dev
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

        def fit_seconds() -> float:
            run_dir = fit(cfg, data=bench.data, overwrite=True)  # the same folder every repeat
            return json.loads((run_dir / "summary.json").read_text())["seconds"]

        pairs = []
        for r in range(a.tax_repeats):
            if r % 2 == 0:
                f_s = fit_seconds()
                h_s = _hand_epoch(bench, a.batch_size)
            else:
                h_s = _hand_epoch(bench, a.batch_size)
                f_s = fit_seconds()
            pairs.append({"fit_s": f_s, "hand_s": h_s})
    fits, hands = [p["fit_s"] for p in pairs], [p["hand_s"] for p in pairs]
    return {
        "tax": statistics.median(f / h for f, h in zip(fits, hands)) - 1.0,
        "tax_of_minimums": min(fits) / min(hands) - 1.0,
        "pairs": pairs,
    }


class OtherLoad:
    """How much CPU the rest of the machine used while the bench ran: the busy time of every core
    (``/proc/stat``) less this process's and its children's CPU time, as a share of the wall
    time x cores. A bench on a shared machine is only worth its ratios when this is near 0."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        idle = int(f[3]) + int(f[4])  # idle + iowait
        return (sum(int(v) for v in f[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def share(self) -> float | None:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        others = (busy - self.busy0) - (self._own() - self.own0)
        return max(0.0, others) / (wall * (os.cpu_count() or 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--subset", type=int, default=12800)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=21, help="interleaved blocks per method (median kept)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (data resident on the device)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: subset 1280, 2 steps, 3 repeats")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--no-tax", action="store_true", help="skip the framework tax (two fit() runs or more)")
    ap.add_argument("--tax-repeats", type=int, default=10, help="fit()/hand pairs for the tax (median)")
    ap.add_argument("--memory-only", action="store_true", help="only the peak memory per method (CPU)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the JSON (default bench/out)")
    ap.add_argument("--memory-child", choices=KINDS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    for name in ("subset", "steps", "repeats", "tax_repeats", "batch_size"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    make_out(ap, a.out)  # before minutes of measuring, not after
    if a.quick:
        a.subset, a.steps, a.repeats, a.tax_repeats = 1280, 2, 3, 2
    if a.memory_child:
        return memory_child(a)
    if a.memory_only and a.device == "cpu":
        mem = cpu_memory(a)
        (a.out / "overhead-memory.json").write_text(json.dumps(mem, indent=2))
        return print_memory(mem)
    load = OtherLoad()
    bench = Bench(a.data, a.subset, a.batch_size, a.steps, a.device)
    est_times, med = measure_steps(a, bench)
    memory = None if a.no_memory else (cuda_memory(bench) if bench.dev.type == "cuda" else cpu_memory(a))
    tax = {"tax": float("nan"), "tax_of_minimums": float("nan"), "pairs": []} if a.no_tax else framework_tax(a, bench)
    report(a, bench, med, est_times, memory, tax, load)


def measure_steps(a, bench: Bench) -> tuple[list[float], dict[str, float]]:
    """Seconds of three estimation passes, and each method's median seconds per step over
    ``a.repeats`` interleaved blocks."""
    est_times = []
    for _ in range(3):  # the median of three passes (the first estimation, in Bench, warmed up)
        bench.sync()
        t0 = time.perf_counter()
        bench.scheds["i-alt-stored"].reestimate()
        bench.sync()
        est_times.append(time.perf_counter() - t0)
    for k in KINDS:  # warm-up
        bench.run(k)
    times = {k: [] for k in KINDS}
    for _ in range(a.repeats):
        for k in KINDS:  # interleaved, so drift in machine load hits every method alike
            times[k].append(bench.run(k))
    return est_times, {k: statistics.median(v) for k, v in times.items()}


NAMES = {
    "b_alt_step_over_sgd": "B-alt step / SGD step",
    "i_alt_stored_step_over_sgd": "I-alt (stored, with its penalty) step / SGD step",
    "i_alt_snapshot_step_over_sgd": "I-alt (snapshot, with its penalty) step / SGD step",
    "estimation_pass_over_epoch": "estimation pass / epoch",
    "maskstore_bits_per_activation": "MaskStore bits per activation",
    "framework_tax": "framework tax (fit / hand loop − 1, median of pairs)",
    "framework_tax_of_minimums": "framework tax (fastest fit / fastest hand loop − 1)",
}


def report(a, bench: Bench, med: dict, est_times: list, memory, tax: dict, load: OtherLoad) -> None:
    """Write overhead[-cuda].json and print the Markdown tables."""
    dev = bench.dev
    epoch = med["sgd"] * -(-len(bench.train) // a.batch_size)  # one epoch of free SGD steps
    machine = f"{bench_machine()}, threads {torch.get_num_threads()}"
    me = resource.getrusage(resource.RUSAGE_SELF)
    res = {
        "command": "python " + shlex.join(["bench/overhead.py", *sys.argv[1:]]),
        **git_commit(),
        "machine": machine,
        "allocator": tune_allocator(),  # "tuned", or why not (SUPPORTNET_MALLOC=default, ...)
        "cpu_kernels": cpu_kernels.status(),  # "loaded <path>", or why the layers ran the torch code
        "device": a.device,
        "data": a.data,
        "subset": a.subset,
        "batch_size": a.batch_size,
        "steps": a.steps,
        "repeats": a.repeats,
        "tax_repeats": a.tax_repeats,
        "seconds_per_step": med,
        "b_alt_step_over_sgd": med["b-alt"] / med["sgd"],
        "i_alt_stored_step_over_sgd": med["i-alt-stored"] / med["sgd"],
        "i_alt_snapshot_step_over_sgd": med["i-alt-snapshot"] / med["sgd"],
        "estimation_pass_over_epoch": statistics.median(est_times) / epoch,
        "maskstore_bits_per_activation": bench.scheds["i-alt-stored"].store.bits_per_activation(),
        "framework_tax": tax["tax"],
        "framework_tax_of_minimums": tax["tax_of_minimums"],
        "framework_tax_pairs": tax["pairs"],
        "memory": memory,
        "other_processes_cpu_share": load.share(),
        "process_cpu_seconds": {"user": me.ru_utime, "system": me.ru_stime},  # this process, not the children
    }
    suffix = "" if dev.type == "cpu" else f"-{dev.type}"
    (a.out / f"overhead{suffix}.json").write_text(json.dumps(res, indent=2))
    col = 0 if dev.type == "cpu" else 1
    print(f"machine: {machine}; {a.data} subset {a.subset}, batch {a.batch_size}, median of {a.repeats}")
    cpu = f"user {me.ru_utime:.1f}, system {me.ru_stime:.1f}"
    print(f"allocator: {res['allocator']}; CPU kernels: {res['cpu_kernels']}; this process's CPU seconds: {cpu}")
    print("| figure | measured | target |\n|---|---:|---|")
    for key, name in NAMES.items():
        print(f"| {name} | {res[key]:.3f} | {TARGETS[key][col]} |")
    if memory:
        print_memory(memory)
    other = res["other_processes_cpu_share"]
    if other is not None and other > 0.05:
        print(
            f"warning: other processes used {other:.0%} of the CPU during the bench; the ratios are not "
            "worth much: rerun it alone",
            file=sys.stderr,
        )


def print_memory(memory: dict) -> None:
    """The peak-memory table (Markdown)."""
    sgd = memory["sgd"]
    print(f"\npeak memory ({sgd['how']}):\n| method | peak MB | ÷ SGD | step MB | ÷ SGD | resident extra |")
    print("|---|---:|---:|---:|---:|---|")
    for k in KINDS:
        m = memory[k]
        what = ""
        if "store_bytes" in m:
            where = " (a copy on the device)" if m.get("store_on_device") else ""
            what = f"store {m['store_bytes'] / 2**20:.1f} MB{where}"
        if "snapshot_model_bytes" in m:
            mb = m["snapshot_model_bytes"] / 2**20, m["probe_bytes"] / 2**20
            what = f"second model {mb[0]:.1f} MB, probe {mb[1]:.1f} MB"
        print(
            f"| {k} | {m['peak_bytes'] / 2**20:.1f} | {m['peak_bytes'] / sgd['peak_bytes']:.3f} | "
            f"{m['step_bytes'] / 2**20:.1f} | {m['step_bytes'] / max(1, sgd['step_bytes']):.3f} | {what} |"
        )


if __name__ == "__main__":
    main()
