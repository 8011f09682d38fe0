"""A launch-free training step on CUDA: capture the step once in a CUDA graph, replay it after.

A training step of a small network on a GPU is mostly kernel launches (convnet-s at batch 128
on an H100: about 1.8 ms a step, most of it the host queuing kernels; docs/performance.md). A
CUDA graph records the step's kernels once and replays them with one launch. This module holds
the mechanism, for a user's own loop; ``fit()`` does not use it yet (``train.cuda_graphs=true`` is
refused: the captured loop was never run on a GPU here). It is
about speed only: the step computed is the one of paper Sec. 4 (Eq. 39-41 for B-alternation,
a fixed support for I-alternation) whatever runs it.

What a step must do to be captured (:class:`GraphedStep` checks none of it; CUDA errors out
on a host sync during capture):

* take every per-batch tensor as an argument (the batch, and I-alternation's stored rows: they
  are copied into static buffers before each replay) and read nothing else that changes from
  batch to batch, except device tensors updated in place;
* keep its state on the device at fixed addresses: parameters and optimizer state (created by
  the eager warm-up steps), the learning rate as a device tensor changed in place
  (``param_group["lr"].fill_(lr)``, with ``torch.optim.SGD(fused=True)``), the divergence guard's
  flag and the loss/statistics counters updated in place (``torch.maximum(flag, now, out=flag)``,
  ``acc.add_``), never read on the host inside the step;
* make the same Python decisions every call: a branch taken at capture (say, the layers'
  ``track`` flag) is frozen into the graph;
* call ``optimizer.zero_grad(set_to_none=True)`` itself and leave ``.grad`` to the step: after
  capture the replayed kernels write the gradients the captured step allocated.

Each distinct set of input shapes (the full batch, the last partial one) gets its own graph,
up to ``max_graphs``; further shapes run eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from .errors import ConfigError

log = logging.getLogger("supportnet")


def _signature(inputs: Sequence[torch.Tensor]) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.stride()) for t in inputs)


class GraphedStep:
    """``step(*inputs)`` run eagerly for ``warmup`` calls per input signature (on a side stream,
    as CUDA graph capture requires), then captured once for that signature and replayed.

    Every call performs exactly one step: the call that captures replays the new graph at once
    (capturing runs nothing). The return value of a replayed call is the captured step's output
    (the same tensors every replay: copy what must outlive the next call). ``replays``,
    ``eager_calls`` and ``graphs`` say what ran."""

    def __init__(self, step: Callable[..., object], warmup: int = 3, max_graphs: int = 2):
        if not torch.cuda.is_available():
            raise ConfigError("a CUDA graph needs a CUDA device, and none is available; run the step eagerly")
        if warmup < 1:
            raise ValueError("a CUDA graph needs at least one eager warm-up step (optimizer state, cuDNN plans)")
        self.step, self.warmup, self.max_graphs = step, warmup, max_graphs
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], object]] = {}
        self._seen: dict[tuple, int] = {}
        self.replays = 0
        self.eager_calls = 0

    def _eager(self, inputs: Sequence[torch.Tensor]):
        """One step outside any graph, on a side stream (the warm-up and the shapes not captured)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.step(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.eager_calls += 1
        return out

    def _capture(self, inputs: Sequence[torch.Tensor]):
        static = [t.detach().clone() for t in inputs]
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            out = self.step(*static)
        log.debug("captured a CUDA graph of the training step for inputs %s", [tuple(t.shape) for t in static])
        return graph, static, out

    def __call__(self, *inputs: torch.Tensor):
        key = _signature(inputs)
        entry = self.graphs.get(key)
        if entry is None:
            seen = self._seen.get(key, 0)
            if seen < self.warmup or len(self.graphs) >= self.max_graphs:
                self._seen[key] = seen + 1  # each new shape warms up eagerly first (cuDNN plans)
                return self._eager(inputs)
            entry = self.graphs[key] = self._capture(inputs)
        graph, static, out = entry
        for dst, src in zip(static, inputs):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        self.replays += 1
        return out
