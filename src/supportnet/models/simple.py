"""Small models for CPU-scale work: ``mlp`` and ``convnet-s``.

``convnet-s`` follows the ALL-CNN idea (Springenberg et al. 2015) that the paper
builds on: strided convolutions instead of pooling, so the thresholds are the
only non-linearity (paper Sec. 3) and a fixed support makes it linear.
"""

from __future__ import annotations

from torch import nn

from ..layers import HardThreshold
from .registry import register_model


class MLP(nn.Module):
    def __init__(self, in_shape, num_classes, hidden=(256, 256), act_layer=HardThreshold, bias=True):
        super().__init__()
        d = 1
        for s in in_shape:
            d *= s
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(d, h, bias=bias), act_layer()]
            d = h
        layers.append(nn.Linear(d, num_classes, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # (B, C, H, W) -> (B, K)
        return self.net(x)


def _out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class ConvNetS(nn.Module):
    """conv3x3(32) - conv3x3/2(64) - conv3x3/2(64) - fc(128) - fc(K), thresholds between."""

    def __init__(self, in_shape, num_classes, width=32, hidden=128, act_layer=HardThreshold, bias=True, dropout=0.0):
        super().__init__()
        c, h, w = in_shape
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(c, w1, 3, padding=1, bias=bias),
            act_layer(),  # (B, w1, H, W)
            nn.Conv2d(w1, w2, 3, stride=2, padding=1, bias=bias),
            act_layer(),  # (B, w2, H/2, W/2)
            nn.Conv2d(w2, w2, 3, stride=2, padding=1, bias=bias),
            act_layer(),  # (B, w2, H/4, W/4)
        )
        fh, fw = _out(_out(h, 3, 2, 1), 3, 2, 1), _out(_out(w, 3, 2, 1), 3, 2, 1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Linear(w2 * fh * fw, hidden, bias=bias),
            act_layer(),
            nn.Linear(hidden, num_classes, bias=bias),
        )

    def forward(self, x):  # (B, C, H, W) -> (B, K)
        return self.classifier(self.features(x))


@register_model("mlp", "two hidden layers of 256 units")
def mlp(in_shape=(1, 28, 28), num_classes=10, **kw):
    return MLP(in_shape, num_classes, **kw)


@register_model("convnet-s", "4 threshold layers, strided convs, sized for 1x28x28 (~0.5M params)")
def convnet_s(in_shape=(1, 28, 28), num_classes=10, **kw):
    return ConvNetS(in_shape, num_classes, **kw)
