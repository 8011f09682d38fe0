"""Run by tests/test_distributed.py, alone or under torchrun: train a few steps and save
(rank 0) the final weights and every B-alternation batch support seen on the way.

    python tests/dist/worker.py OUT METHOD [key=value ...]
"""
import sys
from pathlib import Path

import torch

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
torch.set_num_threads(1)
cfg = load_config(None, ["data.name=synthetic", "data.subset=256", "train.epochs=2", "train.batch_size=32",
                         "model.kwargs={width: 8, hidden: 32}", "quiet=true", "train.train_eval_size=0",
                         "support.warmup=1", f"support.method={method}", f"out={out}/run", *sets])
run = fit(cfg)
import os

if int(os.environ.get("RANK", "0")) == 0:
    from supportnet.io import load_checkpoint

    torch.save({"supports": seen, "state": load_checkpoint(Path(run) / "final.pt")["state_dict"]},
               Path(out) / "result.pt")
