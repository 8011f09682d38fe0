"""Ways to compute B-alt's per-unit energy sum_n x_n^2 on the CPU, timed on fresh activations.

    python bench/energy_passes.py [--shape 128 32 28 28] [--repeats 9] [--number 20]

``x`` is made fresh by ``relu`` inside every timed call, as in a training step, so a reduction
that reads lines the other core has just written pays for it (docs/performance.md, "Where the
threads meet"); ``sum(0), stale`` reads squares written long before, for comparison. Every
variant runs with the allocator tuned as fit() has it. Prints milliseconds per call (best of
``--repeats``) and writes bench/out/energy_passes.json. A benchmark, not a test: run it alone.
"""

from __future__ import annotations

import argparse
import json
import timeit
from pathlib import Path

import torch
from convergence import git_commit
from convergence import machine as bench_machine

from supportnet.allocator import tune_allocator
from supportnet.layers import unit_energy

OUT = Path(__file__).resolve().parent / "out"


def variants(q: torch.Tensor) -> dict:
    """name -> a call computing the energy of relu(q) (or a part of it, for reference)."""
    b = q.shape[0]
    stale = torch.relu(q) ** 2
    return {
        "relu alone (reference)": lambda: torch.relu(q),
        "square, sum(0)": lambda: (torch.relu(q) ** 2).sum(0),
        "sum(0), stale (reference)": lambda: stale.sum(0),
        "unit_energy (square, bmm of the batch's halves)": lambda: unit_energy(torch.relu(q)),
        "vector_norm(dim=0)^2": lambda: torch.linalg.vector_norm(torch.relu(q), 2, dim=0).square(),
        "var_mean(dim=0)": lambda: torch.var_mean(torch.relu(q), 0, correction=0),
        "einsum bu,bu->u": lambda: torch.einsum("bu,bu->u", *[torch.relu(q).reshape(b, -1)] * 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs="+", default=[128, 32, 28, 28])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.repeats < 1 or a.number < 1 or any(d < 1 for d in a.shape) or a.shape[0] % 2:
        ap.error("--repeats, --number and every --shape size must be at least 1, the batch (first) even")
    a.out.mkdir(parents=True, exist_ok=True)
    tuned = tune_allocator()
    q = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    ms = {
        name: min(timeit.repeat(f, number=a.number, repeat=a.repeats)) / a.number * 1e3
        for name, f in variants(q).items()
    }
    res = {
        "command": "python bench/energy_passes.py",
        **git_commit(),
        "machine": f"{bench_machine()}, threads {torch.get_num_threads()}",
        "shape": a.shape,
        "allocator": tuned,
        "ms_per_call": ms,
    }
    (a.out / "energy_passes.json").write_text(json.dumps(res, indent=2))
    print(f"{res['machine']}; shape {tuple(a.shape)}; allocator {tuned}")
    for name, v in ms.items():
        print(f"{v:8.3f} ms  {name}")


if __name__ == "__main__":
    main()
