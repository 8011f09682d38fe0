"""I-alternation in a plain PyTorch training loop (docs/own-loop.md).

python examples/own_loop.py                        # Fashion-MNIST if installed, else MNIST-shaped noise
python examples/own_loop.py --epochs 2 --subset 2000
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import supportnet as sn

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--subset", type=int, default=10000)
args = ap.parse_args()
torch.manual_seed(0)
try:  # real data where it is installed (apt-get install dataset-fashion-mnist)
    d = sn.data.load_data("fashion-mnist", subset=args.subset, test_subset=2000)
    train_set, test_set = TensorDataset(d.train.x, d.train.y), TensorDataset(d.test.x, d.test.y)
except sn.DataError:  # MNIST-shaped stand-in: 10 noisy templates
    templates = torch.randn(10, 1, 28, 28)
    y = torch.randint(0, 10, (args.subset + 2000,))
    x = templates[y] + torch.randn(len(y), 1, 28, 28)
    train_set, test_set = TensorDataset(x[2000:], y[2000:]), TensorDataset(x[:2000], y[:2000])

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
)  # fmt: skip
model = sn.convert(model)  # every ReLU -> HardThreshold(tau=0): the same outputs, supports now controllable
alt = sn.alternation("i-alt", model, train_set, backend="stored", warmup=1)  # or "b-alt", "sgd"
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
loader = DataLoader(sn.with_indices(train_set), batch_size=128, shuffle=True)  # batches (x, y, index)

for epoch in range(args.epochs):
    ev = alt.start_epoch(epoch)  # warm-up; or a new round: every example's support estimated
    model.train()
    total = 0.0
    for x, y, idx in loader:
        with alt.step(idx, x):  # this batch's stored supports, held fixed
            loss = F.cross_entropy(model(x), y) + alt.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(y)
    alt.end_epoch(total / len(train_set))  # plateau test: when the next round starts
    test_loss, test_acc = sn.evaluate(model, test_set)  # free mode: the threshold applies at test time
    print(f"epoch {epoch + 1} [{ev.phase}] train loss {total / len(train_set):.4f}  test acc {test_acc:.4f}")
