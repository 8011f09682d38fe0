"""K-FAC with a line search: a weight-phase solver that uses the convexity a fixed support gives.

Given the multi-layer support, the network is linear in each layer's weights (Huang, Kong, Lucey
2017, Sec. 3.2, Eq. 13-19 with ``apply=linear``; within the fixed gate with ``apply=gated``), so
the loss restricted to one layer is convex (cross-entropy of an affine function) and its region
does not move during the weight phase (Sec. 3.3: weights recovered given the support). This module
is a curvature step built for that phase, and the same code on the free ReLU network is its control.

**Factors** (Martens & Grosse 2015, "Optimizing neural networks with Kronecker-factored
approximate curvature", Sec. 3; Grosse & Martens 2016, "A Kronecker-factored approximate Fisher
matrix for convolution layers", KFC, Sec. 3). For each ``nn.Linear`` and ``nn.Conv2d``
(``groups=1``, numeric padding) with weight ``W`` (out, in) and bias appended as a column of a
constant-1 input::

    A = 1/B  sum_n sum_t a_nt a_ntᵀ        (in+1, in+1)  a: layer input (conv: unfolded patch)
    G = 1/(B T) sum_n sum_t g_nt g_ntᵀ     (out, out)    g = B * dL/ds, s the layer's output

with ``T`` the spatial positions (1 for a linear layer) and ``L`` the batch-mean loss, so ``g`` is
the per-example gradient (the empirical Fisher of the batch the loop back-propagated). ``g`` is
what autograd delivers at the layer's output, i.e. already multiplied by the support ``m`` of the
:class:`~supportnet.layers.HardThreshold` after the layer (``dz/dq = m``): the fixed support in
``batch``/``instance`` modes, the free one in ``free`` mode. Running averages with weight
``max(ema, 1/k)`` on the k-th new batch (bias-corrected start), every ``factor_every`` steps;
inverses every ``update_every`` steps (T in the K-FAC papers).

**Damping**: factored Tikhonov (Martens & Grosse 2015, Sec. 6.3), ``(A + pi sqrt(l) I)`` and
``(G + sqrt(l)/pi I)`` with ``pi = sqrt((tr A / dim A) / (tr G / dim G))`` (``pi_damping``; else
``pi = 1``), inverted in float64 by Cholesky (a pseudo-inverse where ``l = 0`` leaves them
singular). Step direction ``V = G^-1 grad_W A^-1``, optionally rescaled by the KL clip of Ba,
Grosse & Martens 2017 (``kl_clip``), then momentum: ``buf = momentum * buf + V`` and the update
``-lr * alpha * buf`` (without a search, ``alpha = 1``: heavy ball; with one, the search picks the
length of a direction with memory, as for a nonlinear-CG direction, and the buffer keeps the
directions, not the lengths). Parameters outside such layers take the same momentum step on their
plain gradient (SGD). Weight decay: coupled by default (``wd * w``
added to the gradient before preconditioning, and ``wd/2 |w|^2`` added to the line-search
objective); ``decoupled_weight_decay=True`` multiplies by ``1 - lr * wd`` after the step instead.

**Line search**: ``step(closure)`` with ``closure()`` returning the batch loss (no backward; called
under ``no_grad``) backtracks from ``alpha = 1`` (the plain ``lr`` step) while the Armijo condition
``f(w + alpha d) <= f(w) + c alpha <grad f, d>`` fails, shrinking by ``ls_shrink`` (``"armijo"``)
or by safeguarded quadratic interpolation (``"interp"``, Nocedal & Wright, Sec. 3.5); no accepted
step leaves the weights where they were and clears the momentum. The joint loss along ``d`` is not
convex (the layers multiply), only each layer's restriction is, hence a backtracking search rather
than an exact one. ``ls_grow > 1`` starts each search at ``ls_grow`` times the last accepted
``alpha`` (at most ``ls_max``), so steps longer than ``lr`` are possible. ``counts`` holds every
pass: ``forward_backward`` (one per step: the loop's own), ``extra_forwards`` (closure calls);
``passes`` is their sum.

**Held support** (``hold=True``): the line-search passes run inside
:func:`~supportnet.solvers.hold.hold_supports` (``now=True``): a ``batch``-mode layer
(B-alternation) keeps the support of the loop's last forward instead of recomputing it from the
moving weights; ``instance`` mode (I-alternation) is fixed already; ``free`` mode (the SGD control)
holds nothing, so its passes see a network whose region moves. Same code, only the modes differ.

**Distributed**: with ``torch.distributed`` initialised and world > 1, each factor update averages
the batch statistics over ranks (one all-reduce) before folding them in, and every line-search loss
is averaged over ranks, so every rank computes the same inverses and accepts the same step (the
gradients are assumed averaged already, as by DDP).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..choices import LINE_SEARCHES
from ..errors import ConfigError, DivergenceError
from .hold import hold_supports

COUNTS = ("steps", "forward_backward", "extra_forwards", "rejected", "factor_updates", "inverse_updates")


@dataclass
class _Layer:
    """A preconditioned layer and the statistics of the batch being back-propagated."""

    module: nn.Module
    weight: nn.Parameter
    bias: nn.Parameter | None
    a_batch: torch.Tensor | None = None  # (in+1, in+1) this batch's A
    g_batch: torch.Tensor | None = None  # (out, out) this batch's G


def supported(module: nn.Module) -> bool:
    """Whether K-FAC preconditions ``module`` (else its parameters take the SGD fallback)."""
    if isinstance(module, nn.Linear):
        return module.weight.requires_grad
    if isinstance(module, nn.Conv2d):
        numeric = not isinstance(module.padding, str) and module.padding_mode == "zeros"
        return module.groups == 1 and numeric and module.weight.requires_grad
    return False


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows ``a`` of the factor ``A``: ``(B*T, in[+1])``, the bias's constant 1 appended."""
    if isinstance(module, nn.Conv2d):  # (B, C, H, W) -> (B, C*kh*kw, T) -> (B*T, C*kh*kw)
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        a = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:  # (B, ..., in) -> (B*T, in)
        a = x.reshape(-1, x.shape[-1])
    if module.bias is not None:
        a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
    return a


def output_grads(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """The rows ``g`` of the factor ``G``: ``(B*T, out)`` from the gradient at the layer's output."""
    if isinstance(module, nn.Conv2d):  # (B, out, H', W') -> (B*T, out)
        return g.movedim(1, -1).reshape(-1, g.shape[1])
    return g.reshape(-1, g.shape[-1])


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (activations under autocast: the factors are sums of squares)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def damped_inverse(m: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(m + gamma I)^-1`` of a symmetric PSD factor, computed in float64, returned in ``m``'s dtype."""
    d = m.double() + gamma * torch.eye(m.shape[0], dtype=torch.float64, device=m.device)
    if not bool(torch.isfinite(d).all()):
        raise DivergenceError("KFAC: a Kronecker factor is not finite (the loss diverged); lower lr or raise damping")
    chol, info = torch.linalg.cholesky_ex(d)
    inv = torch.cholesky_inverse(chol) if int(info) == 0 else torch.linalg.pinv(d, hermitian=True)
    return inv.to(m.dtype)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` averaged over the ranks in one all-reduce (unchanged on one process)."""
    world = _world()
    if world == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    return [p.view_as(t) for p, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def _scalar_mean(f: float, device: torch.device) -> float:
    """A loss value averaged over the ranks (itself on one process); ``device``: the collective's."""
    return f if _world() == 1 else float(_rank_mean([torch.tensor([f], dtype=torch.float64, device=device)])[0])


def _check(ok: bool, what: str, value, fix: str) -> None:
    """One-line :class:`ConfigError` naming the value and the fix (``supportnet.config``'s style)."""
    if not ok:
        raise ConfigError(f"KFAC {what}, got {value!r}; {fix}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_options(lr, momentum, damping, weight_decay, ema, factor_every, update_every, ls) -> None:
    """Refuse a bad hyperparameter with one line (``ls``: line_search, ls_steps, ls_shrink,
    armijo_c, ls_grow, ls_max, kl_clip)."""
    line_search, ls_steps, ls_shrink, armijo_c, ls_grow, ls_max, kl_clip = ls
    _check(_number(lr) and lr > 0, "lr must be a number > 0", lr, "use e.g. lr=0.01")
    _check(_number(momentum) and 0 <= momentum < 1, "momentum must be in [0, 1)", momentum, "use e.g. momentum=0.9")
    _check(_number(damping) and damping >= 0, "damping must be a number >= 0", damping, "use e.g. damping=1e-2")
    _check(_number(weight_decay) and weight_decay >= 0, "weight_decay must be >= 0", weight_decay, "use 0 or 5e-4")
    _check(_number(ema) and 0 < ema <= 1, "ema (weight of a new batch) must be in (0, 1]", ema, "use e.g. ema=0.05")
    for name, v in (("factor_every", factor_every), ("update_every", update_every)):
        _check(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            f"{name} must be an integer >= 1",
            v,
            f"use e.g. {name}={1 if name == 'factor_every' else 10}",
        )
    _check(
        line_search in LINE_SEARCHES, "line_search is unknown", line_search, f"use one of {', '.join(LINE_SEARCHES)}"
    )
    _check(isinstance(ls_steps, int) and ls_steps >= 1, "ls_steps must be an integer >= 1", ls_steps, "use e.g. 5")
    _check(_number(ls_shrink) and 0 < ls_shrink < 1, "ls_shrink must be in (0, 1)", ls_shrink, "use e.g. 0.5")
    _check(_number(armijo_c) and 0 < armijo_c < 1, "armijo_c must be in (0, 1)", armijo_c, "use e.g. 1e-4")
    _check(_number(ls_grow) and ls_grow >= 1, "ls_grow must be >= 1", ls_grow, "use 1 (start at lr) or e.g. 2")
    _check(_number(ls_max) and ls_max >= 1, "ls_max must be >= 1", ls_max, "use e.g. 10")
    _check(kl_clip is None or (_number(kl_clip) and kl_clip > 0), "kl_clip must be None or > 0", kl_clip, "use 1e-3")


class KFAC(torch.optim.Optimizer):
    """K-FAC (Kronecker-factored natural gradient) with momentum and an Armijo line search.

    ``KFAC(model, lr=0.01, ...)`` preconditions every supported layer of ``model`` and gives the
    rest SGD with momentum; the module docstring has the maths. In a loop::

        loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward()
        opt.step(lambda: F.cross_entropy(model(x), y), loss=loss)

    Under a schedule the whole step goes inside ``with alt.step(idx, x):``: the closure's
    passes need the batch's supports, which the block gives back when it exits.
    ``loss`` (optional) is ``f(w)`` for the search, saving a forward; it must come from the same
    batch, support and penalty terms as the closure. ``param_groups[i]["lr"]`` may be rescaled by
    the loop. ``state_dict()`` holds the factors, inverses, momentum and counters (a resume is
    bit-identical on the CPU).
    """

    #: :func:`supportnet.train_step` hands ``step`` the objective and a closure that re-evaluates it
    takes_loss_closure = True

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        *,
        momentum: float = 0.9,
        damping: float = 1e-2,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        ema: float = 0.05,
        factor_every: int = 1,
        update_every: int = 10,
        pi_damping: bool = True,
        kl_clip: float | None = None,
        line_search: str | None = "armijo",
        ls_steps: int = 5,
        ls_shrink: float = 0.5,
        armijo_c: float = 1e-4,
        ls_grow: float = 1.0,
        ls_max: float = 1.0,
        hold: bool = True,
        batch_averaged: bool = True,
    ):
        line_search = "none" if line_search is None else line_search
        ls = (line_search, ls_steps, ls_shrink, armijo_c, ls_grow, ls_max, kl_clip)
        check_options(lr, momentum, damping, weight_decay, ema, factor_every, update_every, ls)
        self.model, self.ema, self.factor_every, self.update_every = model, float(ema), factor_every, update_every
        self.decoupled, self.pi_damping, self.kl_clip, self.hold = decoupled_weight_decay, pi_damping, kl_clip, hold
        self.line_search, self.ls_steps, self.ls_shrink, self.armijo_c = line_search, ls_steps, ls_shrink, armijo_c
        self.ls_grow, self.ls_max, self.batch_averaged = float(ls_grow), float(ls_max), batch_averaged
        self.layers = [_Layer(m, m.weight, m.bias) for m in model.modules() if supported(m)]
        groups = self._groups(model)
        if not groups:
            raise ConfigError("KFAC: the model has no trainable parameters; pass the model whose weights to train")
        defaults = dict(lr=lr, momentum=momentum, damping=damping, weight_decay=weight_decay)
        super().__init__(groups, defaults)
        self._device = groups[0]["params"][0].device
        self.counts = dict.fromkeys(COUNTS, 0)
        self.alpha, self.last_loss = 1.0, float("nan")  # last accepted step scale (lr units), last f
        self._handles = [lay.module.register_forward_hook(self._forward_hook(lay)) for lay in self.layers]

    def _groups(self, model: nn.Module) -> list[dict]:
        """Two parameter groups: the preconditioned layers' weights and biases, and the rest."""
        mine = [p for lay in self.layers for p in (lay.weight, lay.bias) if p is not None and p.requires_grad]
        ids = {id(p) for p in mine}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [g for g in ({"params": mine, "kfac": True}, {"params": rest, "kfac": False}) if g["params"]]

    @property
    def passes(self) -> int:
        """Forward(+backward) passes so far: the loop's one per step plus the line search's forwards."""
        return self.counts["forward_backward"] + self.counts["extra_forwards"]

    def remove_hooks(self) -> None:
        """Detach the capture hooks from the model (the optimizer cannot update factors afterwards)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- capture ---------------------------------------------------------------------------------

    def _forward_hook(self, lay: _Layer):
        def hook(module, inputs, out):
            if self.counts["steps"] % self.factor_every or not (torch.is_grad_enabled() and out.requires_grad):
                return  # not a factor step, or a pass no backward follows (eval, the line search)
            with torch.no_grad():
                a = _wide(layer_inputs(module, inputs[0].detach()))  # (B*T, in+1), bf16/fp16 -> float32
                batch = inputs[0].shape[0]
                a_b = a.t() @ a / batch  # (in+1, in+1), KFC's sum over positions
                lay.a_batch = a_b if lay.a_batch is None else lay.a_batch + a_b
            out.register_hook(lambda g: self._grad_hook(lay, g, batch))

        return hook

    def _grad_hook(self, lay: _Layer, grad: torch.Tensor, batch: int) -> None:
        with torch.no_grad():
            g = _wide(output_grads(lay.module, grad.detach()))  # (B*T, out)
            if self.batch_averaged:
                g = g * batch  # per-example gradients of a batch-mean loss
            g_b = g.t() @ g / g.shape[0]  # (out, out): 1/(B T) sum over examples and positions
            lay.g_batch = g_b if lay.g_batch is None else lay.g_batch + g_b

    # -- factors and inverses --------------------------------------------------------------------

    def _update_factors(self) -> None:
        """Fold this batch's statistics into the running factors (averaged over ranks first)."""
        ready = [lay for lay in self.layers if lay.a_batch is not None and lay.g_batch is not None]
        if ready:
            stats = _rank_mean([t for lay in ready for t in (lay.a_batch, lay.g_batch)])
            w = max(self.ema, 1.0 / (self.counts["factor_updates"] + 1))
            for i, lay in enumerate(ready):
                st = self.state[lay.weight]
                for key, new in (("A", stats[2 * i]), ("G", stats[2 * i + 1])):
                    st[key] = new.clone() if key not in st else st[key].mul_(1 - w).add_(new, alpha=w)
            self.counts["factor_updates"] += 1
        for lay in self.layers:
            lay.a_batch = lay.g_batch = None

    def _update_inverses(self, damping: float) -> None:
        """Damped inverses of every layer's factors (factored Tikhonov, Martens & Grosse 2015, 6.3)."""
        for lay in self.layers:
            st = self.state[lay.weight]
            if "A" not in st:
                continue
            a, g = st["A"], st["G"]
            pi = 1.0
            if self.pi_damping:
                ta, tg = float(a.trace()) / a.shape[0], float(g.trace()) / g.shape[0]
                pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
            root = math.sqrt(damping)
            st["A_inv"], st["G_inv"] = damped_inverse(a, pi * root), damped_inverse(g, root / pi)
        self.counts["inverse_updates"] += 1

    # -- the step --------------------------------------------------------------------------------

    def _directions(self) -> dict[torch.Tensor, torch.Tensor]:
        """Each parameter's descent direction before momentum: the preconditioned gradient in a
        K-FAC layer (with the KL clip), the gradient elsewhere (coupled weight decay added)."""
        dirs: dict[torch.Tensor, torch.Tensor] = {}
        for group in self.param_groups:
            wd = 0.0 if self.decoupled else group["weight_decay"]
            for p in group["params"]:
                if p.grad is not None:
                    dirs[p] = p.grad.add(p.detach(), alpha=wd) if wd else p.grad.clone()
        kfac_lr, vg = self.param_groups[0]["lr"], 0.0
        for lay in self.layers:
            st = self.state[lay.weight]
            if lay.weight not in dirs or "A_inv" not in st:
                continue
            dw = dirs[lay.weight].reshape(lay.weight.shape[0], -1)  # (out, in)
            has_b = lay.bias is not None and lay.bias in dirs
            if lay.bias is not None:  # (out, in+1); a bias without a gradient has a zero column
                dw = torch.cat([dw, dirs[lay.bias].unsqueeze(1) if has_b else dw.new_zeros(dw.shape[0], 1)], 1)
            grad = dw
            v = st["G_inv"] @ grad @ st["A_inv"]  # (out, in+1)
            vg += float((v * grad).sum())
            dirs[lay.weight] = v[:, : lay.weight[0].numel()].reshape(lay.weight.shape)
            if has_b:
                dirs[lay.bias] = v[:, -1].clone()
        if self.kl_clip is not None and vg > 0:
            nu = min(1.0, math.sqrt(self.kl_clip / (kfac_lr**2 * vg)))
            for lay in self.layers:
                for p in (lay.weight, lay.bias):
                    if p is not None and p in dirs and "A_inv" in self.state[lay.weight]:
                        dirs[p].mul_(nu)
        return dirs

    def _updates(self, dirs, restart: bool = False) -> dict[torch.Tensor, torch.Tensor]:
        """The update ``-lr * buf`` per parameter, with ``buf = momentum * buf + d`` (``restart``:
        the buffer starts again from ``d``). The buffers are written."""
        steps = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p not in dirs:
                    continue
                st = self.state[p]
                buf = st.get("momentum_buffer")
                if buf is None or restart or group["momentum"] == 0:
                    buf = st["momentum_buffer"] = dirs[p].clone()
                else:
                    buf.mul_(group["momentum"]).add_(dirs[p])
                steps[p] = buf.mul(-group["lr"])
        return steps

    def _slope(self, steps) -> float:
        """``<grad f, delta>`` for the objective the search evaluates (coupled L2 included)."""
        total = 0.0
        for group in self.param_groups:
            wd = 0.0 if self.decoupled else group["weight_decay"]
            for p in group["params"]:
                if p in steps:
                    g = p.grad.add(p.detach(), alpha=wd) if wd else p.grad
                    total += float((g * steps[p]).sum())
        return total

    def _l2(self) -> float:
        """``sum_groups wd/2 |w|^2`` (coupled weight decay; 0 when decoupled)."""
        if self.decoupled:
            return 0.0
        return sum(
            0.5 * g["weight_decay"] * float(p.detach().square().sum())
            for g in self.param_groups
            for p in g["params"]
            if g["weight_decay"]
        )

    def _objective(self, closure: Callable) -> float:
        """One extra forward: the closure's batch loss (averaged over ranks) plus the coupled L2."""
        self.counts["extra_forwards"] += 1
        with torch.no_grad():
            f = float(closure())
        return _scalar_mean(f, self._device) + self._l2()

    @torch.no_grad()
    def step(self, closure: Callable | None = None, loss=None):
        """One K-FAC step after the loop's ``loss.backward()``; returns the accepted objective
        (``None`` without a line search). ``closure``: the batch loss, no backward (required unless
        ``line_search="none"``); ``loss``: ``f(w)`` of the same batch, if the loop has it."""
        if self.line_search != "none" and closure is None:
            raise ConfigError("KFAC.step needs a closure that returns the batch loss; or use line_search='none'")
        if self.counts["steps"] % self.factor_every == 0:
            self._update_factors()
        if self.counts["steps"] % self.update_every == 0 or self._missing_inverse():
            self._update_inverses(float(self.param_groups[0]["damping"]))
        self.counts["steps"] += 1
        self.counts["forward_backward"] += 1
        dirs = self._directions()
        steps = self._updates(dirs)
        result = None
        if self.line_search == "none":
            self._move(steps, None, 1.0)
        else:
            with hold_supports(self.model, now=True) if self.hold else nullcontext():
                result = self._search(closure, dirs, steps, loss)
        if self.decoupled:
            for group in self.param_groups:
                for p in group["params"]:
                    if group["weight_decay"] and p in dirs:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
        return result

    def _missing_inverse(self) -> bool:
        return any("A" in self.state[lay.weight] and "A_inv" not in self.state[lay.weight] for lay in self.layers)

    @staticmethod
    def _move(steps, origin, alpha: float) -> None:
        """``w = origin + alpha * delta`` (``origin`` None: ``w += alpha * delta``)."""
        for i, (p, d) in enumerate(steps.items()):
            if origin is not None:
                p.copy_(origin[i])
            p.add_(d, alpha=alpha)

    def _search(self, closure, dirs, steps, loss) -> float:
        """Backtracking from ``alpha0`` until Armijo holds; restores the weights and clears the
        momentum when no trial is accepted. Returns the objective at the accepted point."""
        f0 = self._objective(closure) if loss is None else _scalar_mean(float(loss), self._device) + self._l2()
        slope = self._slope(steps)
        if not slope < 0:  # momentum turned the update uphill: restart it from the direction
            steps = self._updates(dirs, restart=True)
            slope = self._slope(steps)
        origin = [p.detach().clone() for p in steps]
        alpha = 1.0 if self.ls_grow == 1 else min(self.ls_max, self.alpha * self.ls_grow)
        for _ in range(self.ls_steps if slope < 0 else 0):
            self._move(steps, origin, alpha)
            f = self._objective(closure)
            if f <= f0 + self.armijo_c * alpha * slope:
                self.alpha, self.last_loss = alpha, f
                return f
            alpha = self._next_alpha(alpha, f, f0, slope)
        self._move(steps, origin, 0.0)
        for p in steps:
            self.state[p]["momentum_buffer"].zero_()
        self.counts["rejected"] += 1
        self.alpha, self.last_loss = alpha, f0
        return f0

    def _next_alpha(self, alpha: float, f: float, f0: float, slope: float) -> float:
        """The next trial: ``ls_shrink * alpha``, or the minimiser of the quadratic through
        ``f0``, ``slope`` and ``f(alpha)``, kept within ``[0.1, 0.5] * alpha`` (``interp``)."""
        if self.line_search == "interp" and math.isfinite(f):
            curv = f - f0 - slope * alpha
            if curv > 0:
                return min(0.5 * alpha, max(0.1 * alpha, -slope * alpha * alpha / (2 * curv)))
        return self.ls_shrink * alpha

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The optimizer's state: per-parameter factors ``A``/``G``, inverses, momentum buffers
        (torch's format), and ``"kfac"``: the counters and the last step scale. Loads with
        ``torch.load(weights_only=True)``."""
        sd = super().state_dict()
        sd["kfac"] = {"counts": dict(self.counts), "alpha": self.alpha, "last_loss": self.last_loss}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        sd = dict(state_dict)
        extra = sd.pop("kfac", None)
        if extra is None:
            raise ConfigError("KFAC.load_state_dict: the state has no 'kfac' section; pass a KFAC.state_dict()")
        super().load_state_dict(sd)
        self.counts = {k: int(extra["counts"].get(k, 0)) for k in COUNTS}
        self.alpha, self.last_loss = float(extra["alpha"]), float(extra["last_loss"])
        for lay in self.layers:
            lay.a_batch = lay.g_batch = None
