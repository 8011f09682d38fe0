"""Batches as index slices of tensor-resident splits: ``(x, y, index)`` with no per-image Python
(the airbench habit), in an epoch order that is a function of ``(seed, epoch)`` only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .registry import Split


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled example order of one epoch: a function of ``(seed, epoch)`` only,
    so every method of a comparison sees the same data order."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) + 17)
    return torch.randperm(n, generator=g)


def batches(
    split: Split, batch_size: int, order: torch.Tensor | None = None, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y, index)`` batches of ``split`` in ``order`` (default: as stored)."""
    if order is None:
        order = torch.arange(len(split))
    if hasattr(split, "loader"):  # a streaming split decodes in worker processes
        yield from split.loader(order[start * batch_size :], batch_size)
        return
    n = len(order)  # an order may cover only part of the split (a rank's shard)
    for i in range(start * batch_size, n, batch_size):
        idx = order[i : i + batch_size]
        yield split.x[idx], split.y[idx], idx


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
