"""Run by tests/test_distributed.py, alone or under torchrun: train a few steps and save
(rank 0) the final weights and every B-alternation batch support seen on the way.

    python tests/dist/worker.py OUT METHOD [key=value ...]
"""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import supportnet.distributed as sd
import supportnet.layers as layers
from supportnet.config import load_config
from supportnet.train import fit

out, method, *sets = sys.argv[1:]
seen: list[torch.Tensor] = []  # every batch support computed from (all-reduced) statistics, in order
original = layers.support_from_stats


def recording(*args, **kwargs):
    m = original(*args, **kwargs)
    seen.append(m.clone())
    return m


layers.support_from_stats = recording
gather_default = sd.GATHER_MAX_WORLD
torch.set_num_threads(1)
cfg = load_config(None, ["data.name=synthetic", "data.subset=256", "train.epochs=2", "train.batch_size=32",
                         "model.kwargs={width: 8, hidden: 32}", "quiet=true", "train.train_eval_size=0",
                         "support.warmup=1", f"support.method={method}", f"out={out}/run", *sets])
world = int(os.environ.get("WORLD_SIZE", "1"))
if world > 1:  # joined here, so fit() uses this group and leaves it to us
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for gather_max in (sd.GATHER_MAX_WORLD, 0):  # sum_stats' gather path, then its all-reduce path
        sd.GATHER_MAX_WORLD = gather_max
        got = sd.sum_stats(torch.tensor([[rank + 1.0, 0.1 * rank], [1e-300, 2.0 ** -40 * rank]], dtype=torch.float64))
        want = torch.tensor([[sum(r + 1.0 for r in range(world)), sum(0.1 * r for r in range(world))],
                             [world * 1e-300, sum(2.0 ** -40 * r for r in range(world))]], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
        every = [torch.empty_like(got) for _ in range(world)]
        dist.all_gather(every, got)
        assert all(torch.equal(e, got) for e in every), "sum_stats gave different bits on different ranks"
    sd.GATHER_MAX_WORLD = gather_default
run = fit(cfg)
if world > 1:
    dist.barrier()
    dist.destroy_process_group()

if int(os.environ.get("RANK", "0")) == 0:
    from supportnet.checkpoint import load_checkpoint

    torch.save({"supports": seen, "state": load_checkpoint(Path(run) / "final.pt")["state_dict"]},
               Path(out) / "result.pt")
sd.end_process(0)  # as the CLI ends a rank: no exit-time destruction of the group DDP keeps (supportnet.distributed)
