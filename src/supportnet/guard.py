"""The divergence guard: a run whose objective, gradients, weights or test loss become
non-finite stops with exit code 3, before the bad state is checkpointed.

Two forms, one message set:

* **host** (CPU): after every ``backward``, before the update, the objective and the
  gradient norm are checked with one host read; a bad step raises at once.
* **device** (CUDA, or ``SUPPORTNET_LAZY_GUARD=1`` for tests): the same two flags are
  computed on the device and fed to the fused SGD kernel as ``found_inf``, which skips the
  update on the device from the first non-finite step on (sticky), so no step waits for a
  host sync. The flag is read by :meth:`DivergenceGuard.check_pending` every few steps,
  before a checkpoint and at the end of the epoch; the error names the step range.

Every message names where the run was (epoch, step, phase), what became non-finite and
where (a diagnostic forward pass finds the first module whose output is not finite), the
last good checkpoint, and the usual fixes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .errors import DivergenceError

FIX = "lower train.lr, or use support.apply=gated or another support.rule"


def lazy_default(device: torch.device) -> bool:
    """The device form on a GPU (a host read per step would stall its queue); the host form
    on the CPU. ``SUPPORTNET_LAZY_GUARD=1`` forces the device form (tests)."""
    return device.type == "cuda" or os.environ.get("SUPPORTNET_LAZY_GUARD") == "1"


class DivergenceGuard:
    """Checks a run for non-finite values and raises :class:`~supportnet.errors.DivergenceError`.

    ``lazy``: the device form (see the module docstring); it needs ``opt`` to be a fused
    optimizer that honours ``found_inf``. The loop tells the guard where the run is with
    :meth:`at` and :attr:`last_good`."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device, *, lazy: bool,
                 distributed_active: bool = False):  # fmt: skip
        self.model, self.lazy, self.distributed = model, lazy, distributed_active
        self.epoch, self.phase, self.step = 0, "", 0
        self.last_good: Path | None = None
        self.checked = 0  # device form: the last step known to be good
        if lazy:
            self.bad = torch.zeros((), dtype=torch.float32, device=device)
            opt.found_inf = self.bad  # type: ignore[attr-defined]

    def at(self, epoch: int, phase: str) -> None:
        """Where the run is (0-based epoch, phase name), for the messages."""
        self.epoch, self.phase = epoch, phase

    def _raise(self, what: str) -> None:
        raise DivergenceError(f"{what}; last good checkpoint: {self.last_good or 'none'}; {FIX}")

    # -- after backward, before the update ----------------------------------------
    def check_step(self, objective: torch.Tensor, loss: torch.Tensor, x: torch.Tensor, step: int) -> None:
        """Check step ``step`` (1-based) after ``backward``: the objective and the gradients."""
        self.step = step
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        gnorm = torch.stack(torch._foreach_norm(grads)).sum() if grads else torch.zeros_like(objective)
        if self.lazy:  # on the device; the fused step skips while self.bad is set
            now = (~torch.isfinite(objective.detach() + gnorm)).float()  # inf + -inf is nan: still caught
            if self.distributed:  # every rank skips together
                distributed.all_reduce_sum(now)
            torch.maximum(self.bad, now, out=self.bad)
            return
        if self.distributed:  # every rank stops together
            flags = torch.stack([~torch.isfinite(objective.detach()), ~torch.isfinite(gnorm)]).double()
            distributed.all_reduce_sum(flags)
            bad_objective, bad_grad = flags.tolist()  # one host read per step
        else:  # one host read per step, and the fewest small ops (each costs ~10 us on the CPU)
            if math.isfinite((objective.detach() + gnorm).item()):  # inf + -inf is nan: still caught
                return
            bad_objective, bad_grad = not math.isfinite(objective.item()), not math.isfinite(gnorm.item())
        if bad_objective:
            self._raise(
                f"training objective became {objective.item():.3g} (cross-entropy {loss.item():.3g}) at epoch "
                f"{self.epoch + 1}, step {step} ({self.phase} phase); {first_nonfinite_layer(self.model, x)}"
            )
        if bad_grad:
            self._raise(
                f"gradient became non-finite at epoch {self.epoch + 1}, step {step} ({self.phase} phase; "
                f"{self._bad_gradient()}) although the objective was {objective.item():.3g}; the weights were "
                f"not updated"
            )

    def _bad_gradient(self) -> str:
        bad = next(
            (n for n, p in self.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()),
            None,
        )
        if bad is not None:
            return f"first in {bad}"
        if self.distributed:
            return "first in another rank's gradients"
        return "every gradient finite, but their norms sum to inf"

    def check_pending(self, step: int) -> None:
        """Device form: raise if a step since the last check was non-finite (its update, and every
        later one, was skipped on the device). No-op in the host form."""
        if not self.lazy:
            return
        if not self.bad.item():
            self.checked = step
            return
        self._raise(
            f"training objective or gradient became non-finite between steps {self.checked + 1} and {step} "
            f"(epoch {self.epoch + 1}, {self.phase} phase); the weights were not updated from that step on"
        )

    # -- at the end of an epoch ----------------------------------------------------
    def check_weights(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._raise(f"weights became non-finite in epoch {self.epoch + 1} ({self.phase} phase)")

    def check_test_loss(self, test_loss: float, obj_loss: float, probe) -> None:
        """The weights are finite but so large that the free forward overflows: ``probe()`` gives
        a batch for the diagnostic forward pass."""
        if not torch.isfinite(torch.tensor(test_loss)):
            self._raise(
                f"test loss became {test_loss} after epoch {self.epoch + 1} ({self.phase} phase) although the "
                f"training objective was {obj_loss:.3g}; {first_nonfinite_layer(self.model, probe())}"
            )


def first_nonfinite_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Where the activations blew up on ``x``: the first module whose output is not finite, or
    else the module with the largest output magnitude (a diagnostic forward pass)."""
    found: list[str] = []
    largest: list[tuple[float, str]] = []
    hooks = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()):

            def hook(m, inp, out, name=name):
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    if not found and not torch.isfinite(out).all():
                        found.append(name)
                    elif out.numel():
                        largest.append((out.detach().abs().max().item(), name))

            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    finally:
        for h in hooks:
            h.remove()
    if found:
        return f"first non-finite activations in {found[0]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return f"non-finite weights in {bad[0]}"
    if largest:
        v, name = max(largest)
        return f"activations finite, largest |output| {v:.3g} in {name}"
    return "activations finite"
