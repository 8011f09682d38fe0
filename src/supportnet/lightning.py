"""B- and I-alternation in a Lightning ``Trainer``: :class:`SupportCallback`.

The callback drives a :class:`~supportnet.alternation.Schedule` from Lightning's hooks, the
same seam a plain loop uses (docs/own-loop.md)::

    class Lit(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = supportnet.convert(make_net())         # ReLU -> HardThreshold
        def training_step(self, batch, batch_idx):
            x, y, idx = batch                                 # DataLoader(supportnet.with_indices(train_set))
            return F.cross_entropy(self.net(x), y) + supportnet.support_penalty(self.net)  # the one line

    trainer = lightning.Trainer(callbacks=[SupportCallback("i-alt", module="net", backend="stored")])

* the training set (I-alternation estimates every example's support from it) is the one
  passed, else the trainer's training dataloader's ``dataset`` (a ``with_indices`` wrapper is
  unwrapped), read when training starts;
* ``on_train_epoch_start``: the schedule's ``start_epoch`` (warm-up, or a new round's support
  estimation); the mask change is logged as ``support/mask_change``;
* ``on_train_batch_start``: the batch's supports (the batch must carry example indices);
* ``on_train_batch_end`` / ``on_train_epoch_end``: the epoch's mean loss goes to ``end_epoch``
  (the plateau test that starts the next round), summed on the device and read once an epoch;
* the support-consistency penalty is the loss's to add: ``+ supportnet.support_penalty(net)``
  in ``training_step``. A step whose penalty was computed and not read warns, once;
* validation, test and prediction run in free mode (the threshold applies at test time), and
  the training modes come back afterwards;
* while a support is held fixed, each optimizer step runs with the learning rates scaled by
  ``support.lr_scale`` (1 by default): an optimizer step pre-hook scales them and a post-hook
  puts back the values it found, so a learning-rate scheduler (stepped per step or per epoch)
  sees and sets its own values;
* the schedule's state is in Lightning checkpoints: ``Trainer.fit(..., ckpt_path=...)`` resumes
  it (I-alternation's supports rebuilt from the round-start weights).

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

import warnings

import torch

from ._optional import require
from .alternation import Schedule, alternation
from .data import IndexedDataset
from .errors import ConfigError
from .layers import HardThreshold, configure, threshold_layers

L = require("lightning")


def train_set_of(trainer) -> object:
    """The data set of ``trainer``'s training dataloader, without its ``with_indices`` wrapper."""
    ds = getattr(trainer.train_dataloader, "dataset", None)
    if ds is None:
        raise ConfigError(
            "SupportCallback found no training set: the trainer's training dataloader has no .dataset; "
            "pass it, SupportCallback(method, train_set, ...)"
        )
    return ds.dataset if isinstance(ds, IndexedDataset) else ds


class SupportCallback(L.pytorch.Callback):
    """Weight/support alternation (paper Sec. 4) inside ``Trainer.fit``.

    ``method``: ``"b-alt"``, ``"i-alt"`` or ``"sgd"``; ``train``: the training set the
    dataloader reads, by index (I-alternation estimates every example's support from it;
    default: the trainer's training dataloader's data set); ``module``: the attribute of the
    LightningModule holding the converted network (default: the LightningModule itself; name
    it for the snapshot back end, which copies it); ``support``: ``support.*`` config keys
    (``backend="stored"``, ``warmup=1``, ``lr_scale=0.5``, ...).
    """

    def __init__(
        self, method: str, train=None, *, module: str | None = None, eval_batch_size: int | None = None, **support
    ):
        self.method, self.train, self.module_attr = method, train, module
        self.eval_batch_size, self.support = eval_batch_size, support
        self.schedule: Schedule | None = None
        self._state: dict | None = None
        self._loss: torch.Tensor | None = None
        self._n = 0
        self._layers: list[HardThreshold] = []
        self._hooks: list = []
        self._found_lrs: dict[int, list] = {}
        self._modes: list[tuple[str, bool]] = []
        self._warned = False

    def _net(self, pl_module) -> torch.nn.Module:
        return getattr(pl_module, self.module_attr) if self.module_attr else pl_module

    def _build(self, pl_module, train) -> None:
        net = self._net(pl_module)
        self.schedule = alternation(
            self.method, net, train, device=pl_module.device, eval_batch_size=self.eval_batch_size, **self.support
        )
        self._layers = [layer for _, layer in threshold_layers(net)]
        if self._state is not None:
            self.schedule.load_state_dict(self._state)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.schedule is None and (self.train is not None or self.method != "i-alt"):
            self._build(pl_module, self.train)  # else on_train_start, once the trainer has its dataloader

    @staticmethod
    def _refuse_automatic_kfac(trainer, pl_module) -> None:
        if not pl_module.automatic_optimization:
            return
        for opt in trainer.optimizers:
            if getattr(opt, "takes_loss_closure", False):  # KFAC: its closure is the loss alone
                raise ConfigError(
                    f"SupportCallback: {type(opt).__name__} needs manual optimization (its line search re-evaluates "
                    "the loss under the held support); set self.automatic_optimization = False and step it in "
                    "training_step (docs/own-loop.md, Second-order weight phase)"
                )

    def on_train_start(self, trainer, pl_module) -> None:
        self._refuse_automatic_kfac(trainer, pl_module)
        if self.schedule is None:
            self._build(pl_module, self.train if self.train is not None else train_set_of(trainer))
        for opt in trainer.optimizers:
            self._hooks += [opt.register_step_pre_hook(self._scale_lr), opt.register_step_post_hook(self._put_lr)]

    def on_train_end(self, trainer, pl_module) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _scale_lr(self, opt, args, kwargs) -> None:
        f = self.schedule.lr_factor if self.schedule is not None else 1.0
        if f != 1.0:  # support.lr_scale while a support is held fixed
            self._found_lrs[id(opt)] = [g["lr"] for g in opt.param_groups]
            for g in opt.param_groups:
                g["lr"] = g["lr"] * f

    def _put_lr(self, opt, args, kwargs) -> None:
        for g, lr in zip(opt.param_groups, self._found_lrs.pop(id(opt), [])):
            g["lr"] = lr

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        assert self.schedule is not None
        self.schedule.device = pl_module.device
        ev = self.schedule.start_epoch(trainer.current_epoch)
        self._loss, self._n = None, 0
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
            part = loss.detach().float() * n  # summed where the loss lives: no host sync a step
            self._loss = part if self._loss is None else self._loss + part
            self._n += n
        self._check_penalty()

    def _check_penalty(self) -> None:
        unread = False
        for layer in self._layers:
            if layer.penalty is not None:  # computed by the forward, never added to the loss
                unread, layer.penalty = True, None  # and its graph freed
        if unread and not self._warned:
            self._warned = True
            net = f"self.{self.module_attr}" if self.module_attr else "self"
            warnings.warn(
                f"SupportCallback: training_step's loss does not include the support-consistency penalty; "
                f"add + supportnet.support_penalty({net}) to it",
                stacklevel=2,
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        assert self.schedule is not None
        mean = self._loss.item() / self._n if self._loss is not None and self._n else 0.0
        self.schedule.end_epoch(mean)

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
