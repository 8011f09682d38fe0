"""Any map-style ``torch.utils.data.Dataset`` as a supportnet split, and indices for a user's loader.

I-alternation looks supports up by example index (Sec. 4.1: one support per training
example), so every batch must carry its examples' indices. supportnet's own splits are
tensors and its loaders yield ``(x, y, index)``; a user's data set returns ``(x, y)``:

* :func:`with_indices` wraps it so that a plain ``DataLoader`` yields ``(x, y, index)``;
* :class:`DatasetSplit` lets :func:`supportnet.fit` and the schedules read it by index
  (batched by a ``DataLoader`` over a given order), and
* :func:`from_datasets` builds the :class:`~supportnet.data.DataBundle` that ``fit`` takes.

A data set whose transforms are random returns a different view each time an example is
read; :attr:`DatasetSplit.deterministic` detects it (two reads of the same examples), and
stored supports refuse it (the snapshot back end recomputes each view's support instead).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError
from .batching import Inputs, collate
from .registry import DataBundle, Split

_PROBE_ITEMS = 2  # examples read twice to tell random transforms from fixed ones


class IndexedDataset(Dataset):
    """``dataset[i] -> (*dataset[i], i)``: a batch of a ``DataLoader`` over it is ``(x, y, index)``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = _pair(self.dataset[i], i)
        return x, y, i


def with_indices(dataset: Dataset) -> IndexedDataset:
    """Wrap a map-style data set of ``(x, y)`` so that it also returns each example's index:
    ``DataLoader(with_indices(train_set), batch_size=128, shuffle=True)`` yields ``(x, y, idx)``."""
    return IndexedDataset(dataset)


def _pair(item, i: int):
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(
            f"example {i} of the data set is a {type(item).__name__}, not an (x, y) pair; "
            f"supportnet reads map-style data sets whose items are (input tensor, label)"
        )
    x, y = item[0], item[1]
    if not isinstance(x, torch.Tensor):
        raise DataError(
            f"example {i} of the data set has an input of type {type(x).__name__}, not a tensor; "
            f"add a ToTensor-like transform"
        )
    return x, int(y)


class DatasetSplit:
    """A map-style data set of ``(x, y)`` read by index, batched by a ``DataLoader``.

    ``len()``, :meth:`take`, :meth:`loader` and ``x[...]`` are what the training loop and the
    schedules use (as for the tensor-resident :class:`~supportnet.data.Split`). ``workers``:
    ``DataLoader`` worker processes (0: read in the main process).
    """

    def __init__(self, dataset: Dataset, workers: int = 0):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise DataError(
                f"{type(dataset).__name__} is not a map-style data set (it needs __len__ and __getitem__); "
                f"an iterable data set has no example indices, which I-alternation needs"
            )
        if workers < 0:
            raise DataError(f"workers={workers} is negative; use 0 (read in the main process) or more")
        self.dataset, self.workers = dataset, workers
        self._deterministic: bool | None = None
        self._labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def item(self, i: int):
        return _pair(self.dataset[i], i)

    def take(self, index: torch.Tensor) -> DatasetSplit:
        return DatasetSplit(Subset(self.dataset, torch.as_tensor(index).tolist()), self.workers)

    @property
    def x(self) -> Inputs:
        return Inputs(len(self), self.item)

    @property
    def y(self) -> torch.Tensor:
        """Every label (read once: ``targets`` if the data set has it, else every example)."""
        if self._labels is None:
            targets = getattr(self.dataset, "targets", None)
            if targets is not None and len(targets) == len(self):
                self._labels = torch.as_tensor(targets, dtype=torch.int64).reshape(-1)
            else:
                self._labels = torch.tensor([self.item(i)[1] for i in range(len(self))], dtype=torch.int64)
        return self._labels

    @property
    def deterministic(self) -> bool:
        """Whether reading an example twice gives the same input (no random transforms).

        Reads the first examples twice; every random number generator a transform may draw
        from (torch, numpy, Python) is restored afterwards, so the check changes no run."""
        if self._deterministic is None:
            states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
            try:
                same = all(torch.equal(self.item(i)[0], self.item(i)[0]) for i in range(min(_PROBE_ITEMS, len(self))))
            finally:
                torch.set_rng_state(states[0])
                np.random.set_state(states[1])
                random.setstate(states[2])
            self._deterministic = same
        return self._deterministic

    def loader(self, order: torch.Tensor, batch_size: int) -> Iterator:
        """Batches ``(x, y, index)`` in ``order``."""
        chunks = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        dl = torch.utils.data.DataLoader(
            IndexedDataset(self.dataset),
            batch_sampler=chunks,
            num_workers=self.workers,
            collate_fn=collate,
        )
        yield from dl


def as_split(data) -> Split | DatasetSplit:
    """``data`` as something the schedules read by index: a :class:`Split` or a split-like object
    (kept), a ``(x, y)`` pair of tensors, or a map-style ``Dataset``."""
    if isinstance(data, Split) or hasattr(data, "loader"):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise DataError(f"inputs {tuple(x.shape)} and labels {tuple(y.shape)} differ in length; pass (x, y) pairs")
        return Split(x, y.long())
    return DatasetSplit(data)


def first_input(split) -> torch.Tensor:
    """The first example's input, with its batch dimension: shape ``(1, *in_shape)``."""
    if len(split) == 0:
        raise DataError("the training set is empty; pass a data set with at least one example")
    return split.x[:1]


def from_datasets(
    train: Dataset,
    test: Dataset,
    *,
    num_classes: int | None = None,
    name: str = "dataset",
    workers: int = 0,
) -> DataBundle:
    """A :class:`~supportnet.data.DataBundle` of two map-style data sets of ``(x, y)``, for
    :func:`supportnet.fit`. ``num_classes``: taken from the data sets' ``classes`` attribute
    when not given, else counted from the labels (which reads every example once)."""
    tr, te = DatasetSplit(train, workers), DatasetSplit(test, workers)
    in_shape = tuple(first_input(tr).shape[1:])
    test_shape = tuple(first_input(te).shape[1:])
    if test_shape != in_shape:
        raise DataError(f"training inputs are {in_shape} but test inputs are {test_shape}; transform both alike")
    if num_classes is None:
        classes = getattr(train, "classes", None)
        num_classes = len(classes) if classes is not None else int(max(tr.y.max(), te.y.max()).item()) + 1
    return DataBundle(name=name, train=tr, test=te, num_classes=num_classes, in_shape=in_shape)  # type: ignore[arg-type]
