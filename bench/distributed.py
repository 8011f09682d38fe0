"""B-alternation under torchrun: a global-sync step against a local-sync step, 2 gloo processes.

    python bench/distributed.py [--nproc 2] [--steps 20] [--repeats 5]

Relaunches itself under ``torch.distributed.run``. Every rank trains convnet-s on its
half of each global batch of Fashion-MNIST (or synthetic data where it is absent)
through DistributedDataParallel; the variants run interleaved in one process
group, and the median over repeats is kept:

* ``local``: each rank's support from its own examples, inside the training forward;
* ``local+probe``: the same support scope, estimated in a no-grad probe pass;
* ``global``: the probe pass plus one all-reduce of every layer's statistics;
* ``global-inline``: the support of the global batch inside the training forward,
  one small all-reduce per layer (no probe pass).

``global / local`` is the issue's figure (target <= 1.15); ``global / local+probe``
isolates the cost of the all-reduce from the cost of the probe pass.
Writes bench/out/distributed.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def worker(a) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from supportnet.alternation import BAlternation
    from supportnet.config import SupportConfig
    from supportnet.data import batches, epoch_order, load_data
    from supportnet.errors import DataError
    from supportnet.models import create_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        data = load_data("fashion-mnist", subset=a.batch_size * a.steps)
    except DataError:
        data = load_data("synthetic")
    torch.manual_seed(0)
    model = create_model("convnet-s", data.in_shape, data.num_classes)
    net = DDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    per = a.batch_size // world
    glob = list(batches(data.train, a.batch_size, epoch_order(len(data.train), 0, 0)))[: a.steps]
    local = [(x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per], i[rank * per:(rank + 1) * per])
             for x, y, i in glob]
    scheds = {
        "local": BAlternation(SupportConfig(method="b-alt", warmup=0), model, data.train, "cpu"),
        "local+probe": BAlternation(SupportConfig(method="b-alt", warmup=0, probe=True), model, data.train, "cpu"),
        "global": BAlternation(SupportConfig(method="b-alt", warmup=0, sync="global"), model, data.train, "cpu"),
        "global-inline": BAlternation(SupportConfig(method="b-alt", warmup=0, sync="global-inline"), model,
                                      data.train, "cpu"),
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
    for _ in range(a.repeats):
        for k in scheds:
            times[k].append(run(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    if rank == 0:
        res = {"world": world, "backend": "gloo", "threads_per_rank": 1, "global_batch": a.batch_size,
               "data": data.name, "steps": a.steps, "repeats": a.repeats, "seconds_per_step": med,
               "global_over_local": med["global"] / med["local"],
               "global_over_local_probe": med["global"] / med["local+probe"],
               "probe_over_local": med["local+probe"] / med["local"],
               "global_inline_over_local": med["global-inline"] / med["local"]}
        OUT.mkdir(exist_ok=True)
        (OUT / "distributed.json").write_text(json.dumps(res, indent=2))
        print(f"{world} gloo processes, 1 thread each, global batch {a.batch_size}, {data.name}, median of {a.repeats}")
        print("| figure | measured | target |\n|---|---:|---|")
        print(f"| global-sync step / local-sync step | {res['global_over_local']:.3f} | ≤ 1.15 |")
        print(f"| global-sync step / local+probe step (cost of the all-reduce) | {res['global_over_local_probe']:.3f} | – |")
        print(f"| local+probe step / local step (cost of the probe pass) | {res['probe_over_local']:.3f} | – |")
        print(f"| global-inline step / local-sync step (one all-reduce per layer) | "
              f"{res['global_inline_over_local']:.3f} | ≤ 1.15 |")
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    if "WORLD_SIZE" in os.environ:
        worker(a)
        return 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
           __file__, f"--steps={a.steps}", f"--repeats={a.repeats}", f"--batch-size={a.batch_size}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
