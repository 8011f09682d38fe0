"""B- and I-alternation in a Lightning ``Trainer``: :class:`SupportCallback`.

The callback drives a :class:`~supportnet.alternation.Schedule` from Lightning's hooks, the
same seam a plain loop uses (docs/own-loop.md)::

    class Lit(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = supportnet.convert(make_net())         # ReLU -> HardThreshold
        def training_step(self, batch, batch_idx):
            x, y, idx = batch                                 # DataLoader(supportnet.with_indices(train_set))
            return F.cross_entropy(self.net(x), y) + supportnet.support_penalty(self.net)

    trainer = lightning.Trainer(callbacks=[SupportCallback("i-alt", train_set, backend="stored")])

* ``on_train_epoch_start``: the schedule's ``start_epoch`` (warm-up, or a new round's support
  estimation); the mask change is logged as ``support/mask_change``;
* ``on_train_batch_start``: the batch's supports (the batch must carry example indices);
* ``on_train_batch_end`` / ``on_train_epoch_end``: the epoch's mean loss goes to ``end_epoch``
  (the plateau test that starts the next round);
* validation, test and prediction run in free mode (the threshold applies at test time), and
  the training modes come back afterwards;
* while a support is held fixed, the optimizers' learning rates are scaled by
  ``support.lr_scale`` (1 by default), and restored at the epoch's end.

A second-order weight phase (:class:`~supportnet.solvers.KFAC`) needs manual optimization:
Lightning's automatic optimization hands ``step`` a closure that runs the training step and its
backward pass, where K-FAC's line search wants the batch loss alone, evaluated under the support
of the gradient pass. ``on_train_start`` refuses the combination in one line; in manual
optimization the step is the own loop's (docs/own-loop.md, "Second-order weight phase")::

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        opt = self.optimizers()                           # KFAC(self.net, ...) in configure_optimizers
        loss = F.cross_entropy(self.net(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step(closure=lambda: F.cross_entropy(self.net(x), y), loss=loss)
        return loss

Needs ``pip install 'supportnet[lightning]'``.
"""

from __future__ import annotations

import torch

from ._optional import require
from .alternation import Schedule, alternation
from .errors import ConfigError
from .layers import configure, threshold_layers

L = require("lightning")


class SupportCallback(L.pytorch.Callback):
    """Weight/support alternation (paper Sec. 4) inside ``Trainer.fit``.

    ``method``: ``"b-alt"``, ``"i-alt"`` or ``"sgd"``; ``train``: the training set the
    dataloader reads, by index (I-alternation estimates every example's support from it);
    ``module``: the attribute of the LightningModule holding the converted network (default:
    the LightningModule itself; name it for the snapshot back end, which copies it);
    ``support``: ``support.*`` config keys (``backend="stored"``, ``warmup=1``, ...).
    """

    def __init__(
        self, method: str, train=None, *, module: str | None = None, eval_batch_size: int | None = None, **support
    ):
        self.method, self.train, self.module_attr = method, train, module
        self.eval_batch_size, self.support = eval_batch_size, support
        self.schedule: Schedule | None = None
        self._state: dict | None = None
        self._loss, self._n = 0.0, 0
        self._base_lrs: list[list[float]] = []
        self._modes: list[tuple[str, bool]] = []

    def _net(self, pl_module) -> torch.nn.Module:
        return getattr(pl_module, self.module_attr) if self.module_attr else pl_module

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.schedule is None:
            net = self._net(pl_module)
            self.schedule = alternation(
                self.method, net, self.train, device=pl_module.device, eval_batch_size=self.eval_batch_size,
                **self.support,
            )  # fmt: skip
            if self._state is not None:
                self.schedule.load_state_dict(self._state)

    def on_train_start(self, trainer, pl_module) -> None:
        if not pl_module.automatic_optimization:
            return
        for opt in trainer.optimizers:
            if getattr(opt, "takes_loss_closure", False):  # KFAC: its closure is the loss alone
                raise ConfigError(
                    f"SupportCallback: {type(opt).__name__} needs manual optimization (its line search re-evaluates "
                    "the loss under the held support); set self.automatic_optimization = False and step it in "
                    "training_step (docs/own-loop.md, Second-order weight phase)"
                )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        assert self.schedule is not None
        self.schedule.device = pl_module.device
        ev = self.schedule.start_epoch(trainer.current_epoch)
        self._loss, self._n = 0.0, 0
        self._base_lrs = []
        if self.schedule.lr_factor != 1.0:  # support.lr_scale while a support is held fixed
            self._base_lrs = [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers]
            for opt in trainer.optimizers:
                for g in opt.param_groups:
                    g["lr"] *= self.schedule.lr_factor
        if ev.reestimated:
            pl_module.log("support/mask_change", float(ev.mask_change), on_epoch=True, on_step=False)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        assert self.schedule is not None
        if not isinstance(batch, (tuple, list)) or len(batch) < 3:
            raise ConfigError(
                "SupportCallback needs batches (x, y, index): wrap the training set, "
                "DataLoader(supportnet.with_indices(train_set), ...)"
            )
        x, _, idx = batch[0], batch[1], batch[2]
        self.schedule.before_step(x, idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            n = len(batch[1])
            self._loss += loss.detach().float().item() * n
            self._n += n

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        assert self.schedule is not None
        for opt, lrs in zip(trainer.optimizers, self._base_lrs):
            for g, lr in zip(opt.param_groups, lrs):
                g["lr"] = lr
        self.schedule.end_epoch(self._loss / max(self._n, 1))

    # -- evaluation in free mode ---------------------------------------------------------
    def _free(self, pl_module) -> None:
        layers = threshold_layers(self._net(pl_module))
        self._modes = [(layer.mode, layer.track) for _, layer in layers]
        configure(self._net(pl_module), mode="free", track=False, strict=False)

    def _restore(self, pl_module) -> None:
        for (_, layer), (mode, track) in zip(threshold_layers(self._net(pl_module)), self._modes):
            layer.mode, layer.track = mode, track
        self._modes = []

    def _free_hook(self, trainer, pl_module) -> None:
        self._free(pl_module)

    def _restore_hook(self, trainer, pl_module) -> None:
        self._restore(pl_module)

    # validation, test and prediction run in free mode; training's modes come back after
    on_validation_start = on_test_start = on_predict_start = _free_hook
    on_validation_end = on_test_end = on_predict_end = _restore_hook

    def state_dict(self) -> dict:
        return self.schedule.state_dict() if self.schedule is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._state = state_dict or None
        if self.schedule is not None and self._state is not None:
            self.schedule.load_state_dict(self._state)
