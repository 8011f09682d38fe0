"""Time the per-unit batch energy ``sum_n x_n^2`` (the B-alternation rule's reduction) on a GPU.

    python bench/gpu_energy.py

Compares the two forms :func:`supportnet.layers.unit_energy` chooses between (square-and-sum
after a float32 upcast, and one ``vector_norm`` reduction) on activations of resnet18's first
block and allcnn-c's widest layer, in fp32 and bf16, contiguous and channels_last. Prints one
JSON line per case (microseconds, median of 50) and the largest relative difference.
"""

from __future__ import annotations

import json
import statistics
import time

import torch


def timed(f, n: int = 50) -> float:
    for _ in range(5):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def main() -> None:
    dev = torch.device("cuda")
    for name, shape in (("resnet18 block1", (128, 64, 56, 56)), ("allcnn-c layer1", (256, 96, 32, 32))):
        for dtype in (torch.float32, torch.bfloat16):
            for cl in (False, True):
                x = torch.relu(torch.randn(shape, device=dev)).to(dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                a = lambda x=x: (x.float() ** 2).sum(0)
                b = lambda x=x: torch.linalg.vector_norm(x, 2, dim=0, dtype=torch.float32).square()
                rel = ((a() - b()).abs() / a().clamp_min(1e-12)).max().item()
                print(
                    json.dumps(
                        {
                            "case": name,
                            "dtype": str(dtype).split(".")[1],
                            "channels_last": cl,
                            "upcast_square_sum_us": round(timed(a), 1),
                            "vector_norm_us": round(timed(b), 1),
                            "max_rel_diff": rel,
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
