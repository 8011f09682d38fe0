"""A launch-free training step on CUDA: capture the step once in a CUDA graph, replay it after.

A training step of a small network on a GPU is mostly kernel launches (convnet-s at batch 128
on an H100: about 1.8 ms a step, most of it the host queuing kernels; docs/performance.md). A
CUDA graph records the step's kernels once and replays them with one launch. This module holds
the mechanism (:class:`GraphedStep`, for a user's own loop) and fit()'s use of it
(:class:`FitStep`, behind ``train.cuda_graphs=true``; off by default: it has not been timed on
a GPU yet, see docs/performance.md). It is about speed only: the step computed is the one of
paper Sec. 4 (Eq. 39-41 for B-alternation, a fixed support for I-alternation) whatever runs it.

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

Each distinct set of input shapes, and each ``key`` the caller passes for a Python decision it
changes between steps, gets its own graph once it has been seen ``warmup`` times (a shape seen
less often, like the last partial batch of an epoch in fit(), always runs eagerly), up to
``max_graphs``; further ones run eagerly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import torch

from .bits import PackedMasks
from .errors import ConfigError
from .layers import set_instance_masks
from .step import train_step

log = logging.getLogger("supportnet")


def _signature(inputs: Sequence[torch.Tensor]) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.stride()) for t in inputs)


class GraphedStep:
    """``step(*inputs)`` run eagerly for ``warmup`` calls per input signature (on a side stream,
    as CUDA graph capture requires), then captured once for that signature and replayed.

    Every call performs exactly one step: the call that captures replays the new graph at once
    (capturing runs nothing). The return value of a replayed call is the captured step's output
    (the same tensors every replay: copy what must outlive the next call). ``replays``,
    ``eager_calls`` and ``graphs`` say what ran. Everything runs on the GPU of the inputs
    (``cuda:1`` too, whatever the current device is). Each graph has its own memory pool: the
    step's activations are held once per graph, beside what the eager steps left cached."""

    def __init__(self, step: Callable[..., object], warmup: int = 3, max_graphs: int = 4):
        self._check_device()
        if warmup < 1:
            raise ValueError("a CUDA graph needs at least one eager warm-up step (optimizer state, cuDNN plans)")
        self.step, self.warmup, self.max_graphs = step, warmup, max_graphs
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], object]] = {}
        self._seen: dict[tuple, int] = {}
        self.replays = 0
        self.eager_calls = 0

    def _check_device(self) -> None:
        if not torch.cuda.is_available():
            raise ConfigError("a CUDA graph needs a CUDA device, and none is available; run the step eagerly")

    def _on(self, inputs: Sequence[torch.Tensor]):
        """The inputs' GPU as the current device (a graph captures the current device's streams)."""
        dev = next((t.device for t in inputs if t.is_cuda), None)
        return torch.cuda.device(dev) if dev is not None else contextlib.nullcontext()

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
        # a capture stream of this device (torch's default one lives on the device of the process's first
        # capture); thread_local: a DataLoader's pin-memory thread may allocate pinned memory meanwhile
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
            out = self.step(*static)
        log.debug("captured a CUDA graph of the training step for inputs %s", [tuple(t.shape) for t in static])
        return graph, static, out

    def __call__(self, *inputs: torch.Tensor, key: tuple = ()):
        """One step on ``inputs``; ``key``: the Python decisions the step reads that change between
        calls (fit() passes the layers' ``track`` flag), each value its own graph."""
        with self._on(inputs):
            return self._call(inputs, (_signature(inputs), key))

    def _call(self, inputs: Sequence[torch.Tensor], key: tuple):
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


# ----------------------------------------------------------------------------- fit()'s step


def _refuse(why: str) -> None:
    raise ConfigError(f"train.cuda_graphs=true {why} drop train.cuda_graphs")


def check_run(cfg, torchrun: bool, step_hook, lazy_guard: bool) -> None:
    """What the config's own check (``supportnet.config``) cannot see, checked by fit() before
    anything is written (and before a process group is joined)."""
    if not cfg.train.cuda_graphs:
        return
    if torchrun:
        _refuse("is not supported under torchrun yet (DDP's gradient all-reduce is not captured);")
    check_hook(cfg, step_hook)
    if not lazy_guard:
        _refuse("needs the device form of the divergence guard (a host read per step cannot be captured);")


def check_hook(cfg, step_hook) -> None:
    """A step hook (DSD's pruning hook) cannot be captured: its Python would run once, at the capture."""
    if cfg.train.cuda_graphs and step_hook is not None:
        _refuse("cannot capture a step hook (DSD's pruning hook): its Python would run once, at the capture;")


class FitStep:
    """fit()'s training step (:func:`supportnet.step.train_step`) through :class:`GraphedStep`,
    for one epoch (its phase, penalty and layer modes fixed; a new one each epoch).

    The inputs of each step are the batch and, in an I-alternation epoch, the batch's fixed
    supports (the schedule's :meth:`~supportnet.alternation.Schedule.step_masks`: packed rows
    or one bool mask per layer), copied into the graph's buffers; the layers' ``track`` flag
    keys the graphs. While it lives, the optimizer's learning rate is a device tensor that fit()
    sets in place (:func:`set_lr`); :meth:`close` gives the float back."""

    def __init__(self, run, penalised: bool, warmup: int = 3):
        self.run, self.penalised, self.shapes = run, penalised, None
        self.graphed = GraphedStep(self._step, warmup=warmup)
        self.floats = [float(g["lr"]) for g in run.opt.param_groups]
        for g in run.opt.param_groups:  # the fused step reads it on the device; set in place every step
            g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=run.device)

    def _step(self, x: torch.Tensor, y: torch.Tensor, *masks: torch.Tensor) -> torch.Tensor:
        r = self.run
        if masks:
            set_instance_masks(r.model, PackedMasks(masks[0], self.shapes) if self.shapes else list(masks))
        return train_step(r.net, r.opt, x, y, model=r.model, penalised=self.penalised, guard=r.guard,
                          autocast=r.autocast)  # fmt: skip

    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, tracking: bool) -> torch.Tensor:
        """One training step on the batch ``(x, y)`` with example indices ``idx``; the cross-entropy
        (a tensor the next call overwrites)."""
        masks = self.run.sched.step_masks(x, idx)
        inputs = [x, y]
        if isinstance(masks, PackedMasks):
            self.shapes = masks.shapes
            inputs.append(masks.rows)
        elif masks is not None:
            self.shapes = None
            inputs.extend(masks)
        return self.graphed(*inputs, key=(tracking,))

    def close(self, lr: float | None = None) -> None:
        """Drop the graphs; the learning rate is a float again: ``lr`` (the last one set), else the
        one before the epoch (no read of the device: this also runs after an error)."""
        for g, before in zip(self.run.opt.param_groups, self.floats):
            g["lr"] = before if lr is None else lr
        self.graphed.graphs.clear()


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The learning rate of every group: in place where it is a device tensor (:class:`FitStep`)."""
    for g in opt.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr
