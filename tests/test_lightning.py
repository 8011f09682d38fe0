"""SupportCallback drives the schedules from Lightning's hooks: supports fixed in training,
free mode in validation, rounds started by the epoch hooks."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

import supportnet as sn  # noqa: E402
from supportnet.errors import ConfigError  # noqa: E402
from supportnet.lightning import SupportCallback  # noqa: E402
from supportnet.solvers import KFAC  # noqa: E402


class Lit(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = sn.convert(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        )
        self.seen: list[tuple[str, str]] = []  # (stage, mode of the threshold layer)

    def _mode(self):
        return sn.threshold_layers(self.net)[0][1].mode

    def training_step(self, batch, i):
        x, y, _ = batch
        self.seen.append(("train", self._mode()))
        return F.cross_entropy(self.net(x), y) + sn.support_penalty(self.net)

    def validation_step(self, batch, i):
        self.seen.append(("val", self._mode()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(callback, epochs=3, indexed=True):
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(64, 1, 4, 4), torch.randint(0, 4, (64,)))
    lit = Lit()
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    train = DataLoader(sn.with_indices(ds) if indexed else ds, batch_size=16)
    trainer.fit(lit, train, DataLoader(ds, batch_size=32))
    return lit


def test_i_alt_callback_fixes_supports_in_training_and_frees_them_in_validation():
    cb = SupportCallback("i-alt", TensorDataset(torch.randn(64, 1, 4, 4), torch.randint(0, 4, (64,))),
                         module="net", backend="stored", warmup=1)  # fmt: skip
    lit = _fit(cb)
    train_modes = [m for stage, m in lit.seen if stage == "train"]
    assert train_modes[:4] == ["free"] * 4 and set(train_modes[4:]) == {"instance"}  # warm-up, then fixed supports
    assert {m for stage, m in lit.seen if stage == "val"} == {"free"}
    assert cb.schedule.round == 2  # a round per epoch after the warm-up (max_gap=1)
    assert cb.state_dict()["round"] == 2


def test_b_alt_callback_uses_batch_supports():
    lit = _fit(SupportCallback("b-alt", module="net", warmup=0), epochs=1)
    assert {m for stage, m in lit.seen if stage == "train"} == {"batch"}


def test_callback_needs_indexed_batches():
    with pytest.raises(ConfigError, match="with_indices"):
        _fit(SupportCallback("b-alt", module="net"), epochs=1, indexed=False)


class LitKFAC(Lit):
    """K-FAC in manual optimization: the own loop's step inside ``training_step``."""

    def __init__(self, manual=True):
        super().__init__()
        self.automatic_optimization = not manual
        self.losses: list[float] = []
        self.closure_modes: list[str] = []

    def training_step(self, batch, i):
        if self.automatic_optimization:
            return super().training_step(batch, i)
        x, y, _ = batch
        opt = self.optimizers()
        self.seen.append(("train", self._mode()))
        loss = F.cross_entropy(self.net(x), y)
        opt.zero_grad()
        self.manual_backward(loss)

        def closure():
            self.closure_modes.append(self._mode())
            return F.cross_entropy(self.net(x), y)

        opt.step(closure=closure, loss=loss)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return KFAC(self.net, lr=0.05, damping=0.1, update_every=2)


def _fit_module(lit, callback, epochs):
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(64, 1, 4, 4), torch.randint(0, 4, (64,)))
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(lit, DataLoader(sn.with_indices(ds), batch_size=16))
    return ds


def test_kfac_in_manual_optimization_steps_under_the_callbacks_supports():
    """The line search's passes run inside the training step, under the instance supports the
    callback set for the batch; the optimizer's counters show them."""
    torch.manual_seed(0)
    lit = LitKFAC()
    ds = TensorDataset(torch.randn(64, 1, 4, 4), torch.randint(0, 4, (64,)))
    cb = SupportCallback("i-alt", ds, module="net", backend="stored", warmup=1)
    _fit_module(lit, cb, epochs=3)
    opt = lit.optimizers().optimizer
    assert opt.counts["steps"] == 12 and opt.counts["extra_forwards"] >= 12
    assert set(lit.closure_modes[-8:]) == {"instance"} and lit.closure_modes[0] == "free"
    assert sum(lit.losses[-4:]) < sum(lit.losses[:4]), lit.losses


def test_kfac_in_automatic_optimization_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        _fit_module(LitKFAC(manual=False), SupportCallback("b-alt", module="net", warmup=0), epochs=1)
    msg = str(e.value)
    assert "\n" not in msg and "manual optimization" in msg and "automatic_optimization = False" in msg, msg
