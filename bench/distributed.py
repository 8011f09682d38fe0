"""B-alternation under torchrun: a global-sync step against a local-sync step, 2 gloo processes.

    python bench/distributed.py [--nproc 2] [--steps 20] [--repeats 5] [--batch-sizes 128,256,512] [--pin]

Relaunches itself under ``torch.distributed.run``. Every rank trains convnet-s on its
half of each global batch of Fashion-MNIST (or synthetic data where it is absent)
through DistributedDataParallel; the variants run interleaved in one process
group, and the median over repeats is kept (``--repeats`` at least; batches under 512
get proportionally more, see :func:`repeats_for`):

* ``local``: each rank's support from its own examples, inside the training forward;
* ``local+probe``: the same support scope, estimated in a no-grad probe pass;
* ``global``: the probe pass plus one all-reduce of every layer's statistics;
* ``global-inline``: the support of the global batch inside the training forward,
  one small all-reduce per layer (no probe pass).

``global-inline / local`` is the issue's figure (target <= 1.15; also given as the median
of per-repeat ratios, "paired"); ``global / local+probe``
isolates the cost of the all-reduce from the cost of the probe pass. Each global batch
size in ``--batch-sizes`` is measured (the all-reduce volume does not depend on it, the
compute does). Writes bench/out/distributed.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def repeats_for(repeats: int, batch_size: int) -> int:
    """At least ``repeats``; more for batches under 512, so that every size is timed over about
    as many examples (a 128-batch step is ~55 ms on the CPU VM, and 5 x 20 of them
    left the ratio +-0.1 from run to run)."""
    return max(repeats, -(-repeats * 512 // batch_size))


def measure(a, data, batch_size: int, rank: int, world: int) -> dict:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from supportnet.alternation import BAlternation
    from supportnet.config import SupportConfig
    from supportnet.data import batches, epoch_order
    from supportnet.models import create_model

    torch.manual_seed(0)
    model = create_model("convnet-s", data.in_shape, data.num_classes)
    net = DDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per = batch_size // world
    glob = list(batches(data.train, batch_size, epoch_order(len(data.train), 0, 0)))[: a.steps]
    local = [
        (x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per], i[rank * per : (rank + 1) * per])
        for x, y, i in glob
    ]
    scheds = {
        "local": BAlternation(SupportConfig(method="b-alt", warmup=0), model, data.train, "cpu"),
        "local+probe": BAlternation(SupportConfig(method="b-alt", warmup=0, probe=True), model, data.train, "cpu"),
        "global": BAlternation(SupportConfig(method="b-alt", warmup=0, sync="global"), model, data.train, "cpu"),
        "global-inline": BAlternation(
            SupportConfig(method="b-alt", warmup=0, sync="global-inline"), model, data.train, "cpu"
        ),
    }

    def run(kind: str) -> float:
        s = scheds[kind]
        s.start_epoch(0)
        dist.barrier()
        t = time.perf_counter()
        for x, y, idx in local:
            s.before_step(x, idx)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        dist.barrier()
        return (time.perf_counter() - t) / len(local)

    for k in scheds:
        run(k)  # warm-up
    times = {k: [] for k in scheds}
    for _ in range(repeats_for(a.repeats, batch_size)):
        for k in scheds:
            times[k].append(run(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    # the same ratio taken repeat by repeat (each repeat runs the variants back to back), then the
    # median: robust to drift between repeats, which moves all variants of one repeat together
    paired = {k: statistics.median(t / lay for t, lay in zip(times[k], times["local"])) for k in times}
    return {
        "global_batch": batch_size,
        "per_rank_batch": per,
        "repeats": len(times["local"]),
        "seconds_per_step": med,
        "global_over_local": med["global"] / med["local"],
        "global_over_local_probe": med["global"] / med["local+probe"],
        "probe_over_local": med["local+probe"] / med["local"],
        "global_inline_over_local": med["global-inline"] / med["local"],
        "paired_over_local": paired,
    }


def worker(a) -> None:
    import torch
    import torch.distributed as dist

    from supportnet.data import load_data
    from supportnet.errors import DataError

    torch.set_num_threads(1)
    if a.pin:  # this rank (and the gloo threads it starts) on core local_rank % cores
        os.sched_setaffinity(0, {int(os.environ["LOCAL_RANK"]) % os.cpu_count()})
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [int(b) for b in a.batch_sizes.split(",")]
    try:
        data = load_data("fashion-mnist", subset=max(sizes) * a.steps)
    except DataError:
        data = load_data("synthetic")
    rows = []
    for bs in sizes:
        rows.append(measure(a, data, bs, rank, world))
    if rank == 0:
        res = {
            "world": world,
            "backend": "gloo",
            "threads_per_rank": 1,
            "pinned": a.pin,
            "data": data.name,
            "model": "convnet-s",
            "steps": a.steps,
            "repeats": a.repeats,
            "host": platform.node(),
            "cpu": platform.processor(),
            "torch": torch.__version__,
            "rows": rows,
        }
        OUT.mkdir(exist_ok=True)
        (OUT / "distributed.json").write_text(json.dumps(res, indent=2))
        print(
            f"{world} gloo processes, 1 thread each{', pinned' if a.pin else ''}, convnet-s, {data.name}, "
            f"median of >= {a.repeats} x {a.steps} steps (more for batches under 512)"
        )
        print(
            "| global batch | local ms/step | global / local | global / local+probe (all-reduce) "
            "| local+probe / local (probe pass) | global-inline / local | global-inline / local, paired |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['global_batch']} | {1e3 * r['seconds_per_step']['local']:.1f} | {r['global_over_local']:.3f} "
                f"| {r['global_over_local_probe']:.3f} | {r['probe_over_local']:.3f} "
                f"| {r['global_inline_over_local']:.3f} | {r['paired_over_local']['global-inline']:.3f} |"
            )
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-sizes", default="128,256,512", help="global batch sizes, comma-separated")
    ap.add_argument("--pin", action="store_true", help="pin each rank to its own core (sched_setaffinity)")
    a = ap.parse_args()
    if "WORLD_SIZE" in os.environ:
        worker(a)
        return 0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={a.nproc}",
        __file__,
        f"--steps={a.steps}",
        f"--repeats={a.repeats}",
        f"--batch-sizes={a.batch_sizes}",
    ] + ["--pin"] * a.pin
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
