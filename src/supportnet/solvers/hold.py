"""Hold every threshold layer's support fixed across several forward passes of one step.

A weight-phase solver that evaluates the loss more than once per step (a line search, a
Hessian-vector product) needs every pass to see the *same* network. Given the support the network
is linear in each layer's weights (Huang, Kong, Lucey 2017, Sec. 3.2, Eq. 13-19; ``apply=linear``)
or linear within a fixed gate (``apply=gated``), so the per-layer loss is convex and the region in
which that holds does not move while the weights change -- but only if the support does not move.

* **I-alternation** (``instance`` mode, Sec. 4.1): the supports are per example and set before the
  step (``alt.step(idx, x)`` / ``alt.before_step(x, idx)``); every later forward of the same batch
  reuses them. Nothing to hold.
* **B-alternation** (``batch`` mode, Eq. 39-41): each forward recomputes the batch support from the
  batch's own activations, so it would move during a line search. :func:`hold_supports` copies each
  batch-mode layer's support after its first forward into the layer's ``given_batch_mask`` (the
  attribute batch mode reads instead of its rule: the same one the ``sync=global`` schedule sets),
  so the following passes apply it unchanged; leaving the context releases it.
* **free** mode (plain SGD schedule, the *control*): nothing is held. The line-search passes see the
  free ReLU network, whose region moves with the weights. The same solver code runs in both cases;
  the difference is only the schedule's modes.

The batch support is also recoverable from a batch-mode layer's output,
``m = (out != 0).any(0)`` (:func:`support_from_output`): where ``m_i = 0`` the output is zero, and
where ``m_i = 1`` some example is over ``tau`` (energy rules with ``beta >= 0``: a positive energy
needs one; ``vote``: more than half), so its output is non-zero for ``tau >= 0``. The holder does
not rely on this: it copies the layer's ``batch_mask`` itself, which is exact for any rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..layers import HardThreshold, threshold_layers


def support_from_output(out: torch.Tensor) -> torch.Tensor:
    """The batch support ``(*unit)`` (bool) read off a batch-mode layer's output ``(B, *unit)``."""
    return (out != 0).any(0)


def _hold(layer: HardThreshold, held: list[HardThreshold]) -> None:
    """Fix ``layer``'s last batch support (batch mode, not yet given) and remember it in ``held``."""
    if layer.mode != "batch" or layer.given_batch_mask is not None or layer.batch_mask is None:
        return
    # batch_mask may be a buffer the CPU kernels overwrite on the next batch: keep a copy
    layer.given_batch_mask = layer.batch_mask.detach().clone().to(torch.bool)  # (*unit)
    held.append(layer)


@contextmanager
def hold_supports(model: nn.Module, now: bool = False) -> Iterator[list[HardThreshold]]:
    """Hold each batch-mode threshold layer's support fixed, from its first forward inside the
    context (or, with ``now``, from the last forward before it) until the context ends.

    ``with hold_supports(model): loss = f(model(x)); loss.backward(); opt.step(closure)``: the
    first forward computes the batch support (B-alternation, Eq. 41), and the closure's passes
    apply it unchanged. Layers in ``instance`` mode (I-alternation) are fixed already, ``free``
    layers are never held (the control), and a layer whose support is given already (the
    ``sync=global`` schedule's) keeps it. Yields the list of layers held so far.
    A layer called more than once per forward is held at its first call's support.
    """
    layers = [lay for _, lay in threshold_layers(model)]
    held: list[HardThreshold] = []
    if now:
        for lay in layers:
            _hold(lay, held)
    handles = [lay.register_forward_hook(lambda mod, _i, _o: _hold(mod, held)) for lay in layers]
    try:
        yield held
    finally:
        for h in handles:
            h.remove()
        for lay in held:
            lay.given_batch_mask = None
