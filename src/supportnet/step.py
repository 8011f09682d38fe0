"""The two things every training loop calls: one training step, and an evaluation.

:func:`train_step` is the step of paper Sec. 4 for every schedule: the schedule has set the
supports (a fixed support for I-alternation, Eq. 39-41's batch support for B-alternation, none
for SGD) before it is called. :func:`supportnet.fit`, the captured step of
:mod:`supportnet.cuda_graphs`, the benchmarks and a user's own loop all call this one function.
:func:`evaluate` scores a model in free mode (the threshold applies at test time), or in any
other layer mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import eval_batch_for
from .data import Split, batches
from .data.adapters import as_split
from .distributed import all_reduce_sum, world_size
from .guard import DivergenceGuard
from .layers import FREE_IN_EVAL, gated_eval, layer_mode, support_penalty

__all__ = ["evaluate", "train_step"]


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block; the training flag restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int | None = None, device=None, mode: str = "free"
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` with every layer in ``mode``.

    ``split``: a :class:`~supportnet.data.Split`, a ``(x, y)`` pair of tensors or a map-style
    ``Dataset`` of ``(x, y)``. ``batch_size``: default, the device's (128 on the CPU, 1024 on CUDA).
    ``device``: default, where the model's parameters are."""
    split = as_split(split)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch_size = eval_batch_for(batch_size, device)
    total_loss, correct, n = 0.0, 0, 0
    world = world_size()
    if world > 1:  # each rank evaluates its share; the sums are all-reduced below
        split = split.take(torch.arange(dist.get_rank(), len(split), world))
    # eval mode (dropout off); a support mode keeps the threshold layers training, since eval means free
    with gated_eval(model) if mode in FREE_IN_EVAL else _eval(model), layer_mode(model, mode):
        for x, y, _ in batches(split, batch_size):
            x, y = x.to(device), y.to(device)
            out = model(x)
            total_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += y.numel()
    if world > 1:
        sums = all_reduce_sum(torch.tensor([total_loss, float(correct), float(n)], dtype=torch.float64, device=device))
        total_loss, correct, n = sums[0].item(), int(sums[1].item()), int(sums[2].item())
    return total_loss / max(n, 1), correct / max(n, 1)


def train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    model: nn.Module | None = None,
    penalised: bool = False,
    guard: DivergenceGuard | None = None,
    step: int = 0,
    autocast: Callable = nullcontext,
    step_hook: Callable | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """One optimizer step on the batch ``(x, y)`` under the supports the schedule has set.

    The objective is the cross-entropy (with ``label_smoothing``), plus the support-consistency
    penalty of the same forward pass when the phase has one (``penalised``). An optimizer that
    searches its step length (``opt.takes_loss_closure``: :class:`~supportnet.solvers.KFAC`) is
    handed the objective and a closure that evaluates it again on the same batch, under the same
    supports. ``net`` is the module to run (a DDP or
    compiled wrapper of ``model``, or ``model`` itself). The ``guard`` checks the objective and
    the gradients after backward and before the update (``step``: this step's 1-based number,
    for its messages). ``step_hook(model, opt)`` runs after the update (DSD holds pruned weights
    at zero with it). Returns the cross-entropy, detached."""
    model = net if model is None else model

    def batch_objective() -> tuple[torch.Tensor, torch.Tensor]:
        with autocast():
            loss = F.cross_entropy(net(x), y, label_smoothing=label_smoothing)
        return loss, loss.float() + support_penalty(model) if penalised else loss.float()

    loss, objective = batch_objective()
    opt.zero_grad(set_to_none=True)
    objective.backward()
    if guard is not None:
        guard.check_step(objective, loss, x, step)
    if getattr(opt, "takes_loss_closure", False):
        opt.step(lambda: batch_objective()[1], loss=objective.detach())
    else:
        opt.step()
    if step_hook is not None:
        step_hook(model, opt)
    return loss.detach()
