"""Newton-CG on one layer's weights under a held support: a block of a block-coordinate sweep.

Given the multi-layer support the network output is linear in any one layer's weights (Huang,
Kong, Lucey 2017, Sec. 3.2, Eq. 14-19: ``z = U v`` with ``U`` built from the input and the
supports), so with ``apply=linear`` the cross-entropy loss restricted to that layer is convex and
its Hessian *is* the Gauss-Newton matrix ``Jᵀ H_out J`` (``H_out = diag p - p pᵀ`` per example;
Schraudolph 2002; Martens 2010, "Deep learning via Hessian-free optimization"). With
``apply=gated`` the same holds within the fixed gate, i.e. wherever the gate ``1[q > tau]`` of the
layer's own output does not flip. :func:`newton_cg_layer` minimises that restricted loss: each
iteration solves ``(G + damping I) d = -grad`` by conjugate gradients with Gauss-Newton-vector
products, then backtracks (Armijo) along ``d``. Every pass runs inside
:func:`~supportnet.solvers.hold.hold_supports`, so a B-alternation batch support stays the one of
the first forward; I-alternation's per-example supports are fixed already; in ``free`` mode (the
control) the region moves with the weights.

``Jv`` comes from the double-vjp identity ``Jv = d/du <Jᵀu, v>`` (two reverse passes over the kept
graph), since the threshold layers' autograd Functions define no forward-mode rule; this needs a
differentiable backward: the consistency penalty must be off (``consistency=0``), and packed
instance supports (the stored back end's) are unpacked for the call. The objective is the
batch's mean cross-entropy plus ``weight_decay/2 |theta|^2`` on the layer's parameters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layers import threshold_layers
from .hold import hold_supports


@dataclass
class LayerReport:
    """What :func:`newton_cg_layer` did."""

    iterations: int
    cg_iterations: int
    loss: float  # the final restricted objective
    grad_norm: float  # |grad| over the layer's parameters
    converged: bool
    seconds: float
    forwards: int  # model forward passes (graph builds and line-search trials)

    def as_dict(self) -> dict:
        return asdict(self)


class _Block:
    """The loss restricted to ``params`` on one batch: value, gradient, Gauss-Newton products."""

    def __init__(self, model: nn.Module, params: list[torch.Tensor], x, y, wd: float):
        self.model, self.params, self.x, self.y, self.wd = model, params, x, y, wd
        self.forwards = 0

    def value(self) -> float:
        self.forwards += 1
        with torch.no_grad():
            return float(F.cross_entropy(self.model(self.x), self.y)) + self._l2()

    def _l2(self) -> float:
        return 0.5 * self.wd * sum(float(p.detach().square().sum()) for p in self.params)

    def linearise(self) -> tuple[float, list[torch.Tensor]]:
        """Build the graph at the current weights; returns ``(f, grad)``."""
        self.forwards += 1
        with torch.enable_grad():
            self.logits = self.model(self.x)  # (N, K)
            loss = F.cross_entropy(self.logits, self.y)
            grads = torch.autograd.grad(loss, self.params, retain_graph=True)
            self.u = torch.zeros_like(self.logits, requires_grad=True)
            self.jtu = torch.autograd.grad(self.logits, self.params, self.u, create_graph=True)  # linear in u
        self.p = torch.softmax(self.logits.detach(), 1)
        return float(loss.detach()) + self._l2(), [g + self.wd * p.detach() for g, p in zip(grads, self.params)]

    def ggn(self, v: list[torch.Tensor], damping: float) -> list[torch.Tensor]:
        """``(Jᵀ H_out J + (wd + damping) I) v`` with ``H_out = (diag p - p pᵀ) / N``."""
        with torch.enable_grad():
            jv = torch.autograd.grad(self.jtu, self.u, v, retain_graph=True)[0]  # (N, K)
            hjv = (self.p * jv - self.p * (self.p * jv).sum(1, keepdim=True)) / len(self.p)
            out = torch.autograd.grad(self.logits, self.params, hjv, retain_graph=True)
        return [o + (self.wd + damping) * vi for o, vi in zip(out, v)]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum(float((x * y).sum()) for x, y in zip(a, b))


def _cg(block: _Block, g: list[torch.Tensor], damping: float, iters: int, rtol: float):
    """Conjugate gradients on ``(G + damping) d = -g`` from ``d = 0``; returns ``(d, iterations)``."""
    d = [torch.zeros_like(t) for t in g]
    r = [-t for t in g]
    p = [t.clone() for t in r]
    rr, stop = _dot(r, r), rtol**2 * _dot(g, g)
    for it in range(iters):
        if rr <= stop:
            return d, it
        gp = block.ggn(p, damping)
        alpha = rr / _dot(p, gp)
        d = [di + alpha * pi for di, pi in zip(d, p)]
        r = [ri - alpha * gi for ri, gi in zip(r, gp)]
        rr, rr_old = _dot(r, r), rr
        p = [ri + (rr / rr_old) * pi for ri, pi in zip(r, p)]
    return d, iters


def _armijo(block: _Block, d, f: float, slope: float, steps: int = 20) -> float:
    """Move the parameters to the first ``t = 1, 1/2, ...`` with Armijo (c = 1e-4); 0 when none."""
    origin = [p.detach().clone() for p in block.params]
    t = 1.0
    with torch.no_grad():
        for _ in range(steps):
            for p, o, di in zip(block.params, origin, d):
                p.copy_(o).add_(di, alpha=t)
            if block.value() <= f + 1e-4 * t * slope:
                return t
            t *= 0.5
        for p, o in zip(block.params, origin):
            p.copy_(o)
    return 0.0


@contextmanager
def _unpacked(model: nn.Module) -> Iterator[None]:
    """Instance supports held as packed rows (the stored back end's) as bool masks for the call: the
    fused CPU kernel's backward is once-differentiable, the torch node's is not."""
    saved = []
    for _, lay in threshold_layers(model):
        m = lay.instance_mask
        if lay.mode == "instance" and m is not None and not isinstance(m, torch.Tensor) and hasattr(m, "unpack"):
            saved.append((lay, m))
            lay.instance_mask = m.unpack()
    try:
        yield
    finally:
        for lay, m in saved:
            lay.instance_mask = m


def newton_cg_layer(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    weight_decay: float = 0.0,
    damping: float = 1e-4,
    tol: float = 1e-6,
    max_iter: int = 10,
    cg_iters: int = 50,
    cg_rtol: float = 0.1,
) -> LayerReport:
    """Minimise the batch loss over ``layer``'s parameters alone (the others and the supports fixed)
    by Newton-CG; the parameters are updated in place. ``x, y``: one batch (in ``instance`` mode, the
    batch whose supports are set). Stops when ``|grad| <= tol`` or after ``max_iter`` iterations."""
    for ok, what, v, fix in (
        (damping >= 0, "damping must be >= 0", damping, "use e.g. 1e-4"),
        (tol > 0, "tol must be > 0", tol, "use e.g. 1e-6"),
        (isinstance(max_iter, int) and max_iter >= 1, "max_iter must be an integer >= 1", max_iter, "use e.g. 10"),
        (isinstance(cg_iters, int) and cg_iters >= 1, "cg_iters must be an integer >= 1", cg_iters, "use e.g. 50"),
        (0 < cg_rtol < 1, "cg_rtol must be in (0, 1)", cg_rtol, "use e.g. 0.1"),
    ):
        if not ok:
            raise ConfigError(f"newton_cg_layer {what}, got {v!r}; {fix}")
    params = [p for p in layer.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"newton_cg_layer: {type(layer).__name__} has no trainable parameters; pass another layer")
    t0, block = time.perf_counter(), _Block(model, params, x, y, float(weight_decay))
    it = cg_total = 0
    with hold_supports(model), _unpacked(model):
        f, g = block.linearise()
        while (gnorm := _dot(g, g) ** 0.5) > tol and it < max_iter:
            d, n = _cg(block, g, damping, cg_iters, min(cg_rtol, gnorm**0.5))
            cg_total += n
            if _armijo(block, d, f, _dot(g, d)) == 0.0:
                break  # no decrease representable: at the block's optimum up to rounding
            it += 1
            f, g = block.linearise()
    del block.jtu, block.u, block.logits
    return LayerReport(it, cg_total, f, gnorm, gnorm <= tol, time.perf_counter() - t0, block.forwards)
