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
