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

ModelCheckpoint = L.pytorch.callbacks.ModelCheckpoint


class Lit(L.LightningModule):
    def __init__(self, penalty=True, scheduler=None):
        super().__init__()
        self.penalty, self.scheduler = penalty, scheduler
        self.net = sn.convert(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        )
        self.seen: list[tuple[str, str]] = []  # (stage, mode of the threshold layer)

    def _mode(self):
        return sn.threshold_layers(self.net)[0][1].mode

    def training_step(self, batch, i):
        x, y, _ = batch
        self.seen.append(("train", self._mode()))
        loss = F.cross_entropy(self.net(x), y)
        return loss + sn.support_penalty(self.net) if self.penalty else loss

    def validation_step(self, batch, i):
        self.seen.append(("val", self._mode()))

    def configure_optimizers(self):
        opt = RecordingSGD(self.parameters(), lr=0.05)
        if self.scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler(opt), "interval": "step"}}


class RecordingSGD(torch.optim.SGD):
    """SGD that records the learning rate each step runs with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_lrs: list[float] = []

    def step(self, closure=None):
        self.step_lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def _data():
    torch.manual_seed(0)
    return TensorDataset(torch.randn(64, 1, 4, 4), torch.randint(0, 4, (64,)))


def _fit(callback, epochs=3, indexed=True, lit=None, val=True, ckpt_dir=None, ckpt_path=None):
    ds = _data()
    lit = lit or Lit()
    extra = [ModelCheckpoint(ckpt_dir, every_n_epochs=1, save_top_k=-1)] if ckpt_dir else []
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback, *extra], accelerator="cpu", logger=False,
                        enable_checkpointing=bool(ckpt_dir), enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    train = DataLoader(sn.with_indices(ds) if indexed else ds, batch_size=16)
    trainer.fit(lit, train, DataLoader(ds, batch_size=32) if val else None, ckpt_path=ckpt_path)
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


def test_i_alt_callback_reads_the_training_set_from_the_trainer():
    cb = SupportCallback("i-alt", module="net", backend="stored", warmup=1)  # no train set passed
    lit = _fit(cb, epochs=2)
    assert [m for stage, m in lit.seen if stage == "train"][4:] == ["instance"] * 4
    assert len(cb.schedule.train) == 64 and cb.schedule.store.n == 64  # with_indices unwrapped


def test_a_loss_without_the_penalty_warns_once():
    with pytest.warns(UserWarning, match=r"add \+ supportnet.support_penalty\(self.net\)") as rec:
        _fit(SupportCallback("i-alt", module="net", backend="stored", warmup=1), lit=Lit(penalty=False))
    assert sum("support_penalty" in str(w.message) for w in rec) == 1  # two i-alt epochs, one warning
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*support_penalty.*")
        _fit(SupportCallback("i-alt", module="net", backend="stored", warmup=1), epochs=2)


def test_lr_scale_leaves_a_step_scheduler_its_own_values():
    """A per-step LambdaLR sets each step's rate; the callback scales the step itself, so the
    rate a step runs with is the scheduler's times lr_scale (1 in the warm-up) and the
    scheduler's own value survives the epoch's end."""
    lit = Lit(scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.9**k))
    _fit(SupportCallback("b-alt", module="net", warmup=1, lr_scale=0.5), epochs=2, lit=lit, val=False)
    opt = lit.trainer.optimizers[0]
    want = [0.05 * 0.9**k * (1.0 if k < 4 else 0.5) for k in range(8)]
    assert opt.step_lrs == pytest.approx(want, rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.9**8, rel=1e-12)


def test_the_epoch_loss_is_read_once_an_epoch(monkeypatch):
    import sys

    import supportnet.lightning as lightning_mod

    calls = []
    item = torch.Tensor.item

    def counted(self):
        if sys._getframe(1).f_code.co_filename == lightning_mod.__file__:
            calls.append(1)
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    _fit(SupportCallback("b-alt", module="net", warmup=0), epochs=2, val=False)  # 4 steps an epoch
    assert len(calls) == 2


def test_resume_from_a_lightning_checkpoint_gives_the_uninterrupted_run(tmp_path):
    def callback():
        return SupportCallback("i-alt", module="net", backend="stored", warmup=1, lr_scale=0.5)

    full_cb = callback()
    full = _fit(full_cb, epochs=3, val=False)
    _fit(callback(), epochs=2, val=False, ckpt_dir=tmp_path)  # epochs 0 (warm-up) and 1 (a round), checkpointed
    (ckpt,) = tmp_path.glob("epoch=1-*.ckpt")
    cb = callback()
    resumed = _fit(cb, epochs=3, val=False, ckpt_path=ckpt)
    got, want = cb.state_dict(), full_cb.state_dict()
    a, b = got.pop("round_start"), want.pop("round_start")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert got == want and cb.schedule.round >= 1
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), full.state_dict().values()))
    assert [m for stage, m in resumed.seen if stage == "train"] == ["instance"] * 4  # one epoch left, fixed
