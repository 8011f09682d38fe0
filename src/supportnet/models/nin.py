"""Network in Network (Lin, Chen, Yan 2014), the network of the paper's Tables 5-6.

Three mlpconv blocks (a spatial convolution followed by two 1x1 convolutions, each
with a threshold), 3x3 max pooling of stride 2 and 50% dropout between blocks,
global average pooling over the last block's class maps. Max pooling stays a
non-linearity beside the thresholds; the paper applies alternation to NIN all the
same (Sec. 4.1).
"""

from __future__ import annotations

from torch import nn

from ..layers import HardThreshold
from .registry import register_model


def _mlpconv(cin, widths, k, act_layer):
    a, b, c = widths
    return [
        nn.Conv2d(cin, a, k, padding=k // 2),
        act_layer(),
        nn.Conv2d(a, b, 1),
        act_layer(),
        nn.Conv2d(b, c, 1),
        act_layer(),
    ]


class NIN(nn.Module):
    def __init__(
        self,
        in_shape=(3, 32, 32),
        num_classes=10,
        widths=((192, 160, 96), (192, 192, 192), (192, 192)),
        kernels=(5, 5, 3),
        act_layer=HardThreshold,
        dropout=0.5,
    ):
        super().__init__()
        c = in_shape[0]
        (a1, b1, c1), (a2, b2, c2), (a3, b3) = widths
        L: list[nn.Module] = []
        L += _mlpconv(c, (a1, b1, c1), kernels[0], act_layer)
        L += [nn.MaxPool2d(3, stride=2, ceil_mode=True), nn.Dropout(dropout)]  # (B, c1, H/2, W/2)
        L += _mlpconv(c1, (a2, b2, c2), kernels[1], act_layer)
        L += [nn.MaxPool2d(3, stride=2, ceil_mode=True), nn.Dropout(dropout)]  # (B, c2, H/4, W/4)
        L += _mlpconv(c2, (a3, b3, num_classes), kernels[2], act_layer)
        L += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # (B, K)
        self.net = nn.Sequential(*L)
        for m in self.modules():  # He initialisation: PyTorch's default leaves this 9-layer net stuck at chance
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


@register_model("nin", "Network in Network (Lin et al. 2014), CIFAR/SVHN form, 3x32x32")
def nin(in_shape=(3, 32, 32), num_classes=10, **kw):
    return NIN(in_shape, num_classes, **kw)


@register_model("nin-mnist", "Network in Network, MNIST form, 1x28x28 (narrower blocks)")
def nin_mnist(in_shape=(1, 28, 28), num_classes=10, **kw):
    kw.setdefault("widths", ((96, 64, 48), (128, 96, 48), (128, 96)))
    return NIN(in_shape, num_classes, **kw)
