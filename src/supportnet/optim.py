"""The weight phase's optimizer, as ``train.optimizer`` names it.

The paper trains the weights given the support by SGD (Sec. 4). Given the support, the loss is
convex in each layer's weights (exactly with the linear application, Eq. 13; within the fixed
gate with the gated one), which a second-order method can use: ``kfac`` is K-FAC whose factors
are those of the support the layers hold and whose step length is found by a line search under
that same support (:class:`supportnet.solvers.KFAC`; the ``kfac`` config section). The same code
on the free network (``support.method=sgd``) is the control that tells whether the support is
what helps (docs/results.md, "A weight phase that uses the convexity given the support").

* ``sgd``: ``torch.optim.SGD``, heavy-ball or Nesterov momentum (``train.nesterov``);
* ``adamw``: ``torch.optim.AdamW`` (decoupled ``train.weight_decay``);
* ``kfac``: :class:`~supportnet.solvers.KFAC` (coupled ``train.weight_decay``);
* ``soap``: heavyball's SOAP (``pip install 'supportnet[optim]'``), with torch.compile off.

Every optimizer takes its learning rate from ``param_group["lr"]``, which the loop sets each
step (``train.lr`` times the schedule), and its state round-trips through ``state_dict``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._optional import require
from .config import Config
from .solvers import KFAC

__all__ = ["make_optimizer", "lr_at"]


def lr_at(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Learning rate multiplier at optimizer step ``step``: a linear warm-up over
    ``train.lr_warmup`` epochs (from 0), times the schedule (per-step cosine, step decay, or a
    linear decay that reaches 0 at the run's last step)."""
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    warm = t.lr_warmup * steps_per_epoch
    ramp = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    if t.schedule == "cosine":
        return ramp * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if t.schedule == "step":
        epoch = step // steps_per_epoch
        return ramp * t.gamma ** sum(1 for m in t.milestones if epoch >= m)
    if t.schedule == "linear":  # after the warm-up, down to 0 at the last step
        return ramp * min(1.0, max(0.0, (total - step) / max(1.0, total - warm)))
    return ramp


def make_optimizer(model: nn.Module, cfg: Config, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer ``cfg.train.optimizer`` names, over ``model``'s parameters. ``fused``: SGD's
    fused step (one kernel per step on a GPU; what a captured step needs)."""
    t, name = cfg.train, cfg.train.optimizer
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                               nesterov=t.nesterov and t.momentum > 0, fused=True if fused else None)  # fmt: skip
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if name == "kfac":
        k = cfg.kfac
        return KFAC(model, t.lr, momentum=t.momentum, damping=k.damping, weight_decay=t.weight_decay, ema=k.ema,
                    factor_every=k.factor_every, update_every=k.update_every, line_search=k.line_search,
                    ls_steps=k.ls_steps, hold=k.hold)  # fmt: skip
    heavyball = require("heavyball")  # soap (choices.OPTIMIZERS)
    heavyball.utils.compile_mode = None  # its default max-autotune compile took 72 s for SOAP's first steps on the CPU
    return heavyball.SOAP(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
