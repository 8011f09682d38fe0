"""I-alternation in a Lightning Trainer: supportnet.lightning.SupportCallback (docs/own-loop.md).

pip install 'supportnet[lightning]'
python examples/lightning_callback.py              # Fashion-MNIST if installed, else MNIST-shaped noise
python examples/lightning_callback.py --epochs 2 --subset 2000
"""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import supportnet as sn
from supportnet.lightning import SupportCallback

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--subset", type=int, default=10000)
args = ap.parse_args()
torch.manual_seed(0)
try:
    d = sn.data.load_data("fashion-mnist", subset=args.subset, test_subset=2000)
    train_set, test_set = TensorDataset(d.train.x, d.train.y), TensorDataset(d.test.x, d.test.y)
except sn.DataError:
    templates = torch.randn(10, 1, 28, 28)
    y = torch.randint(0, 10, (args.subset + 2000,))
    x = templates[y] + torch.randn(len(y), 1, 28, 28)
    train_set, test_set = TensorDataset(x[2000:], y[2000:]), TensorDataset(x[:2000], y[:2000])


class Lit(L.LightningModule):
    def __init__(self):
        super().__init__()
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )  # fmt: skip
        self.net = sn.convert(net)  # ReLU -> HardThreshold

    def training_step(self, batch, batch_idx):
        x, y, _ = batch  # the index is read by the callback
        loss = F.cross_entropy(self.net(x), y) + sn.support_penalty(self.net)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self.net(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


callback = SupportCallback("i-alt", module="net", backend="stored", warmup=1)  # the training set: the trainer's
trainer = L.Trainer(
    max_epochs=args.epochs, callbacks=[callback], accelerator="cpu", logger=False,
    enable_checkpointing=False, enable_model_summary=False,
)  # fmt: skip
trainer.fit(
    Lit(),
    DataLoader(sn.with_indices(train_set), batch_size=128, shuffle=True),  # batches (x, y, index)
    DataLoader(test_set, batch_size=256),
)
print(f"test acc {trainer.callback_metrics['test_acc']:.4f}")
