import torch
from torch import nn

from supportnet import HardThreshold, convert


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                  nn.Conv2d(4, 4, 3), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(3), nn.Tanh())

    def forward(self, x):
        return self.head(self.body(x))


def test_convert_swaps_relu_modules_and_reports():
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 1, 12, 12)
    before = net(x).detach()
    rep = convert(net)
    assert rep.converted == ["body.1", "body.4"]
    assert any("MaxPool2d" in s for s in rep.left_alone) and any("Tanh" in s for s in rep.left_alone)
    assert all(isinstance(net.body[i], HardThreshold) for i in (1, 4))
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert torch.equal(net(x), before)  # tau = 0: identical outputs
    assert "converted 2 ReLU site(s)" in str(rep)
