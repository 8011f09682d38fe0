"""Exact solve of the classifier layer: multinomial logistic regression on the network's features.

The last layer has no threshold after it (Huang, Kong, Lucey 2017, Sec. 3.2: ``M^(L) = I`` in
Eq. 19), so given the features ``phi_n`` entering it the training loss is a convex function of its
weights alone: cross-entropy of the affine map ``theta phi_n`` (with optional label smoothing) plus
the L2 term of weight decay. This is the one block of the weight phase (Sec. 3.3) that can be solved
to optimality directly, whatever the other layers' supports are. The solver:

* computes ``phi`` with a forward hook on the last ``nn.Linear`` (the layers in whatever modes the
  caller set, ``free`` by default). Right after an I-alternation re-estimation (Sec. 4.1) the stored
  support *is* the free support of the same weights, so free features are the support's features;
  in ``instance`` mode pass one batch that matches the masks set (``batch_size=None``); in
  ``batch`` mode each chunk computes its own batch support (Eq. 41);
* minimises, in float64,
  ``f(theta) = 1/N sum_n CE_eps(theta [phi_n; 1], y_n) + wd/2 |theta|^2`` with damped Newton
  (exact Hessian ``1/N sum_n (diag p_n - p_n p_nᵀ) ⊗ phi_n phi_nᵀ + wd I``, Cholesky, Levenberg
  damping when it is not positive definite, Armijo backtracking; Nocedal & Wright, Ch. 3 and 10)
  until ``|grad f|_2 <= tol``; heads with more than ``newton_max_params`` parameters use L-BFGS
  with a strong-Wolfe line search instead (``torch.optim.LBFGS``);
* writes the solution into the layer and returns a :class:`HeadReport`.

Without weight decay and label smoothing, separable features have no finite optimum (the loss only
tends to 0); the solve then stops at ``max_iter`` with ``converged=False``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import Split
from ..errors import ConfigError
from ..layers import gated_eval

METHODS = ("auto", "newton", "lbfgs")


@dataclass
class HeadReport:
    """What :func:`solve_head` did."""

    method: str  # newton | lbfgs
    iterations: int
    loss: float  # final objective (mean CE + L2)
    grad_norm: float  # |grad f|_2 at the solution
    converged: bool  # grad_norm <= tol
    seconds: float  # features and solve
    forward_batches: int  # model forward passes over chunks of the data (one pass over it in all)
    evaluations: int  # objective (and gradient) evaluations on the features
    examples: int
    params: int

    def as_dict(self) -> dict:
        return asdict(self)


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (the classifier layer of the zoo's models)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"solve_head: {type(model).__name__} has no nn.Linear layer; pass layer= explicitly")
    return linears[-1]


def _chunks(data, batch_size: int | None):
    """``(x, y)`` chunks of a tensor pair, a :class:`~supportnet.data.Split` or a map-style Dataset."""
    if isinstance(data, Split):
        data = (data.x, data.y)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        step = batch_size or len(y)
        for i in range(0, len(y), step):
            yield x[i : i + step], y[i : i + step]
        return
    if isinstance(data, Dataset):
        for batch in DataLoader(data, batch_size=batch_size or len(data), shuffle=False):
            yield batch[0], batch[1]
        return
    raise ConfigError(f"solve_head: data must be (x, y) tensors, a Split or a Dataset, got {type(data).__name__}")


@torch.no_grad()
def head_features(
    model: nn.Module,
    data,
    layer: nn.Linear | None = None,
    batch_size: int | None = 1024,
    eval_mode: bool = True,
    max_examples: int | None = None,
):
    """The inputs of ``layer`` (default :func:`last_linear`) over ``data``: ``(phi (N, D), y (N,),
    forward_batches)``, ``phi`` in float64 on the model's device, with the threshold layers in
    the modes the caller set. ``eval_mode``: the rest in eval mode (dropout off)."""
    layer = layer if layer is not None else last_linear(model)
    device = layer.weight.device
    feats, labels, n, batches = [], [], 0, 0
    handle = layer.register_forward_hook(
        lambda _m, inp, _o: feats.append(inp[0].detach().reshape(-1, inp[0].shape[-1]))
    )
    try:  # eval mode means free mode: gated_eval keeps the modes the caller set, with dropout off
        with gated_eval(model) if eval_mode else nullcontext():
            for x, y in _chunks(data, batch_size):
                if max_examples is not None and n >= max_examples:
                    break
                model(x.to(device))
                labels.append(y.to(device))
                n, batches = n + len(y), batches + 1
    finally:
        handle.remove()
    if not feats:
        raise ConfigError("solve_head: the data is empty, or the model never called the layer; check data and layer")
    phi, y = torch.cat(feats).double(), torch.cat(labels).long()
    if len(phi) != len(y):
        raise ConfigError(f"solve_head: the layer saw {len(phi)} feature rows for {len(y)} labels; pass layer=")
    return (phi[:max_examples], y[:max_examples], batches) if max_examples is not None else (phi, y, batches)


class _Objective:
    """``f``, ``grad f`` and the Hessian of the regularised multinomial logistic loss in
    ``theta`` (K, D+1) row-major, on the features ``phi`` (N, D+1) (bias column included)."""

    def __init__(self, phi, y, k: int, wd: float, smoothing: float, decay: torch.Tensor):
        self.phi, self.wd, self.decay = phi, wd, decay  # decay: (K, D+1) 1 where the L2 term applies
        n = len(y)
        self.q = torch.full((n, k), smoothing / k, dtype=phi.dtype, device=phi.device)  # (N, K) targets
        self.q.scatter_add_(1, y[:, None], torch.full((n, 1), 1 - smoothing, dtype=phi.dtype, device=phi.device))
        self.evaluations = 0

    def value(self, theta: torch.Tensor) -> float:
        self.evaluations += 1
        z = self.phi @ theta.t()  # (N, K)
        ce = (torch.logsumexp(z, 1) - (self.q * z).sum(1)).mean()
        return float(ce + 0.5 * self.wd * (self.decay * theta * theta).sum())

    def grad(self, theta: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        """``(f, grad (K, D+1), p (N, K))``."""
        f = self.value(theta)
        p = torch.softmax(self.phi @ theta.t(), 1)
        g = (p - self.q).t() @ self.phi / len(self.phi) + self.wd * self.decay * theta
        return f, g, p

    def hessian(self, p: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """``1/N sum_n (diag p_n - p_n p_nᵀ) ⊗ phi_n phi_nᵀ + wd diag(decay)``: (K(D+1), K(D+1))."""
        n, d1 = self.phi.shape
        k = p.shape[1]
        h = torch.zeros(k, d1, k, d1, dtype=self.phi.dtype, device=self.phi.device)
        for c in range(k):  # the diag(p) term, one (D+1, D+1) block per class
            h[c, :, c, :] = (self.phi * p[:, c : c + 1]).t() @ self.phi
        h = h.reshape(k * d1, k * d1)
        for i in range(0, n, chunk):  # minus M^T M with rows p_n ⊗ phi_n, in chunks of examples
            m = (p[i : i + chunk, :, None] * self.phi[i : i + chunk, None, :]).reshape(-1, k * d1)
            h.sub_(m.t() @ m)
        h.div_(n)
        h.diagonal().add_(self.wd * self.decay.reshape(-1))
        return h


def _newton(obj: _Objective, theta: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, int, float]:
    """Damped Newton with Armijo backtracking; returns ``(theta, iterations, |grad|)``."""
    f, g, p = obj.grad(theta)
    it, mu = 0, 0.0
    while float(g.norm()) > tol and it < max_iter:
        h = obj.hessian(p)
        while True:  # Levenberg damping until the system is positive definite
            chol, info = torch.linalg.cholesky_ex(h + mu * torch.eye(len(h), dtype=h.dtype, device=h.device))
            if int(info) == 0:
                break
            mu = max(10 * mu, 1e-10)
        d = -torch.cholesky_solve(g.reshape(-1, 1), chol).reshape(theta.shape)  # (K, D+1)
        slope, t = float((g * d).sum()), 1.0
        for _ in range(40):  # Armijo (c = 1e-4) backtracking by halves
            if obj.value(theta + t * d) <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break  # no decrease representable in float64: at the optimum up to rounding
        theta, it, mu = theta + t * d, it + 1, mu * 0.1
        f, g, p = obj.grad(theta)
    return theta, it, float(g.norm())


def _lbfgs(obj: _Objective, theta: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, int, float]:
    """L-BFGS (history 50, strong Wolfe) to ``|grad|_inf <= tol / sqrt(dim)``."""
    w = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w],
        lr=1,
        max_iter=max_iter,
        history_size=50,
        line_search_fn="strong_wolfe",
        tolerance_grad=tol / w.numel() ** 0.5,
        tolerance_change=0.0,
    )

    def closure():
        opt.zero_grad()
        with torch.no_grad():
            f, g, _ = obj.grad(w)
        w.grad = g
        return torch.tensor(f, dtype=w.dtype)

    opt.step(closure)
    it = opt.state[w].get("n_iter", 0)
    with torch.no_grad():
        _, g, _ = obj.grad(w)
    return w.detach(), int(it), float(g.norm())


def _check_options(method, weight_decay, label_smoothing, tol, max_iter) -> None:
    """Refuse a bad :func:`solve_head` argument with one line naming the value and the fix."""
    for ok, what, v, fix in (
        (method in METHODS, "method is unknown", method, f"use one of {', '.join(METHODS)}"),
        (weight_decay >= 0, "weight_decay must be >= 0", weight_decay, "use 0 or e.g. 5e-4"),
        (0 <= label_smoothing < 1, "label_smoothing must be in [0, 1)", label_smoothing, "use 0 or e.g. 0.1"),
        (tol > 0, "tol must be > 0", tol, "use e.g. 1e-8"),
        (isinstance(max_iter, int) and max_iter >= 1, "max_iter must be an integer >= 1", max_iter, "use e.g. 100"),
    ):
        if not ok:
            raise ConfigError(f"solve_head {what}, got {v!r}; {fix}")


def solve_head(
    model: nn.Module,
    data,
    *,
    layer: nn.Linear | None = None,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    decay_bias: bool = True,
    tol: float = 1e-8,
    max_iter: int = 100,
    method: str = "auto",
    batch_size: int | None = 1024,
    max_examples: int | None = None,
    newton_max_params: int = 4096,
    eval_mode: bool = True,
) -> HeadReport:
    """Solve the classifier layer to optimality on ``data`` and write the solution into it.

    ``data``: ``(x, y)`` tensors, a :class:`~supportnet.data.Split` or a Dataset of ``(x, y)``
    items (its first ``max_examples``: full batch by default). ``weight_decay``: the L2 weight
    of the training objective (``train.weight_decay``), on the bias too with ``decay_bias``.
    ``method``: ``newton`` (exact Hessian), ``lbfgs``, or ``auto`` (Newton up to
    ``newton_max_params`` parameters). Starts from the layer's current weights.
    """
    _check_options(method, weight_decay, label_smoothing, tol, max_iter)
    t0 = time.perf_counter()
    layer = layer if layer is not None else last_linear(model)
    phi, y, batches = head_features(model, data, layer, batch_size, eval_mode, max_examples)
    k = layer.out_features
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ConfigError(f"solve_head: labels must be in [0, {k}) for a layer with {k} outputs; check the data")
    theta = layer.weight.detach().double()  # (K, D)
    decay = torch.ones_like(theta)
    if layer.bias is not None:  # the bias as a column of a constant-1 feature
        phi = torch.cat([phi, phi.new_ones(len(phi), 1)], 1)
        theta = torch.cat([theta, layer.bias.detach().double()[:, None]], 1)  # (K, D+1)
        decay = torch.cat([decay, torch.full((k, 1), float(decay_bias), dtype=theta.dtype, device=theta.device)], 1)
    obj = _Objective(phi, y, k, float(weight_decay), float(label_smoothing), decay)
    chosen = method if method != "auto" else ("newton" if theta.numel() <= newton_max_params else "lbfgs")
    theta, iters, gnorm = (_newton if chosen == "newton" else _lbfgs)(obj, theta, tol, max_iter)
    with torch.no_grad():
        layer.weight.copy_(theta[:, : layer.in_features].to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(theta[:, -1].to(layer.bias.dtype))
    return HeadReport(
        chosen,
        iters,
        obj.value(theta),
        gnorm,
        gnorm <= tol,
        time.perf_counter() - t0,
        batches,
        obj.evaluations,
        len(y),
        theta.numel(),
    )
