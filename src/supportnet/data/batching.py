"""Batches as index slices of tensor-resident splits: ``(x, y, index)`` with no per-image Python
(the airbench habit), in an epoch order that is a function of ``(seed, epoch)`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

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


def collate(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, index)`` items as one batch: the inputs stacked, labels and indices as int64
    (the DataLoader batches of a :class:`~supportnet.data.DatasetSplit` and a folder stream)."""
    xs, ys, idx = zip(*items)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), torch.tensor(idx, dtype=torch.int64)


class Inputs:
    """``data.x[a:b]`` / ``data.x[index]`` of a data set read by index (``read(i)`` returns
    ``(x, ...)``; ``n`` examples): the inputs as one tensor (small requests only)."""

    def __init__(self, n: int, read: Callable[[int], tuple]):
        self.n, self.read = n, read

    def __getitem__(self, key) -> torch.Tensor:
        idx = range(self.n)[key] if isinstance(key, slice) else torch.as_tensor(key).reshape(-1).tolist()
        return torch.stack([self.read(i)[0] for i in idx])
