"""The support operations in plain torch: the batch rules and the reference autograd nodes.

What a :class:`~supportnet.layers.HardThreshold` computes for a given support, written once in
torch, below both the layer and the fused kernels (:mod:`supportnet.kernels`): the layer calls
these nodes where no kernel runs, and each kernel's first use is checked against them. Paper
Eq. 9 and 12-13 (the threshold and its support), Eq. 39-41 (the batch support rules):

* ``energy`` (Eq. 41): ``m_i = 1[sum_n x_{n,i}^2 > beta]``;
* ``energy-rel``: ``beta`` in units of the layer's mean energy;
* ``vote`` (the paper's majority-vote remark): ``m_i = 1[mean_n 1[q_{n,i} > tau] > 1/2]``.

This module imports nothing of supportnet above :mod:`supportnet.errors` and
:mod:`supportnet.choices`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .choices import RULES
from .errors import ConfigError


def _factor(m: torch.Tensor) -> torch.Tensor:
    """A bool mask as a multiplier. Multiplying floats by a bool tensor converts the bools to
    float element by element; by the same bytes viewed as uint8 (0/1) the conversion is
    vectorised: on the 2-core CPU, 0.52 ms against 1.15 ms for 128x32x28x28 (bench/unpack_masks.py).
    The product is the same number either way."""
    return m.view(torch.uint8) if m.dtype == torch.bool else m


def masked_node(name: str, doc: str, masked: Callable, grad: Callable) -> type[torch.autograd.Function]:
    """An autograd node for ``(out, m) = masked(q, *args)``, an output masked by a support ``m``
    (which has no gradient): it saves ``out`` only, and the gradient of ``q`` is
    ``grad(g, out)``. The torch code's batch support here and the fused kernels' are both one."""

    def forward(ctx, q, *args):
        out, m = masked(q, *args)
        ctx.save_for_backward(out)
        ctx.mark_non_differentiable(m)
        return out, m

    def backward(ctx, g, _grad_m):
        (out,) = ctx.saved_tensors
        return (grad(g, out), *(None,) * (len(ctx.needs_input_grad) - 1))

    body = {"__doc__": doc, "forward": staticmethod(forward), "backward": staticmethod(backward)}
    return type(name, (torch.autograd.Function,), body)


def _gate_by_batch(q: torch.Tensor, tau: float, rule) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.relu(q) if tau == 0.0 else torch.where(q > tau, q, 0.0)
    m = rule(q, x)
    return x.mul_(m.to(x.dtype)), m  # (the small per-unit mask converted once, not per example)


def threshold_grad(g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The gradient through a masked ``relu_tau`` (tau >= 0): it passes where ``out`` is non-zero."""
    return torch.ops.aten.threshold_backward(g, out, 0.0)


_GatedBatch = masked_node(
    "_GatedBatch",
    """``relu_tau(q) * m`` with ``m = rule(q, relu_tau(q))`` shared by the batch (``gated``, tau >= 0);
    ``_GatedBatch.apply(q, tau, rule)``.

    Autograd through ``relu`` then ``* m`` keeps two tensors and runs two elementwise passes
    backward; here the output is masked in place and is the only thing saved: for tau >= 0 an
    output entry is non-zero exactly where ``q > tau`` and ``m`` hold, which is where the
    gradient passes (``threshold_backward``, one pass). Returns ``(out, m)``; ``m`` has no gradient.
    """,
    _gate_by_batch,
    threshold_grad,
)


class _GatedInstance(torch.autograd.Function):
    """Per-example supports, ``gated`` (tau >= 0): ``out = relu_tau(q) * m`` and, with ``penalty``,
    the support-consistency penalty ``mean(where(m, 0, relu(q - tau))^2)`` in one node.

    Plain autograd runs about fifteen elementwise passes forward and backward for the pair; here
    forward keeps the output and the over-threshold part of the switched-off units, and backward is
    ``threshold_backward(g, out) + over * (2 g_pen / N)`` (``out != 0`` exactly where ``q > tau``
    and ``m``, as tau >= 0). Returns ``(out, pen)``;
    ``pen`` is a zero tensor without ``penalty``.
    """

    @staticmethod
    def forward(ctx, q, m, tau, penalty):  # type: ignore[override]
        x = torch.relu(q) if tau == 0.0 else torch.where(q > tau, q, 0.0)
        if penalty:
            out = x * _factor(m)  # (a multiply: on CPU much cheaper than masked_fill or where)
            # the switched-off part of x is x - out exactly; relu(q - tau) there is relu(x - out - tau)
            over = x.sub_(out) if tau == 0.0 else x.sub_(out).sub_(tau).clamp_min_(0.0)
            flat = over.reshape(-1)
            pen = torch.dot(flat, flat) / q.numel()
        else:
            out, over, pen = x.mul_(_factor(m)), None, q.new_zeros(())
        ctx.save_for_backward(out, over)  # for tau >= 0, out != 0 exactly where the gradient passes
        ctx.numel = q.numel()
        return out, pen

    @staticmethod
    def backward(ctx, grad, grad_pen):  # type: ignore[override]
        out, over = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(grad, out, 0.0)
        if over is not None and grad_pen is not None:
            g = g.addcmul_(over, grad_pen * (2.0 / ctx.numel))
        return g, None, None, None


class _BinaryStraightThrough(torch.autograd.Function):
    """Forward ``1[q > tau]``; backward multiplies by the same mask (``dz/dq = m``)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, tau: float) -> torch.Tensor:  # type: ignore[override]
        m = q > tau
        ctx.save_for_backward(m)
        return m.to(q.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (m,) = ctx.saved_tensors
        return grad * m, None


def unit_energy(x: torch.Tensor) -> torch.Tensor:
    """``sum_n x_n^2`` per unit, in float32 (``x``: ``(B, *unit)``, any float dtype).

    On CUDA one fused reduction (``vector_norm`` reads bf16/fp16 and accumulates in float32,
    no upcast copy; squared afterwards on the small per-unit tensor). On the CPU square, then
    sum each half of the batch with a batched matrix product (``bmm`` of a row of ones) and add
    the halves: the threads that wrote the squares (each a contiguous half of the batch) read
    their own half back. ``sum(0)`` splits the work by unit instead, so every thread reads
    lines the other core has just written (``python bench/energy_passes.py``; docs/performance.md,
    "Where the threads meet"). The result does not depend on the thread count; it differs from
    ``sum(0)`` in float32 rounding only. An odd or tiny batch, or a layout other than contiguous
    (channels_last, where the halves would need a copy), takes ``sum(0)``."""
    if x.device.type == "cuda":
        return torch.linalg.vector_norm(x, 2, dim=0, dtype=torch.float32).square()
    b = x.shape[0]
    if b % 2 or b < 4 or not x.is_contiguous():
        return (x.float() ** 2).sum(0)
    sq = x.float().square().reshape(2, b // 2, -1)
    return torch.bmm(sq.new_ones(2, 1, b // 2), sq).sum(0).view(x.shape[1:])


def batch_support(q: torch.Tensor, tau: float, rule: str, beta: float, x: torch.Tensor | None = None) -> torch.Tensor:
    """The support shared by a batch, shape ``q.shape[1:]`` (bool). No gradient.

    ``x`` may pass the free output ``relu_tau(q)`` when the caller has it already.
    """
    with torch.no_grad():
        if rule == "vote":
            return (q > tau).float().mean(0) > 0.5
        if x is None:
            x = torch.where(q > tau, q, 0.0)
        x = x.detach()
        energy = unit_energy(x)  # (*unit): sum over the batch, Eq. 40
        if rule == "energy":
            return energy > beta
        if rule == "energy-rel":
            return energy > beta * energy.mean()
    raise ConfigError(f"unknown batch rule {rule!r}; use one of {', '.join(RULES)}")
