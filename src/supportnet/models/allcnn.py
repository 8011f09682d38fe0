"""ALL-CNN-A/B/C (Springenberg, Dosovitskiy, Brox, Riedmiller 2015, "Striving for
simplicity: the all convolutional net"), the networks of the paper's Tables 2-4.

Each is its base model (A, B, C of Springenberg's Table 1) with every max pooling
replaced by a 3x3 convolution of stride 2 (Table 2), so the thresholds are the
only non-linearity (paper Sec. 3). Dropout 20% on the input and 50% after each
strided layer; a final 1x1 convolution to the classes; global average pooling.

Parameter counts for 3x32x32 input and 10 classes (``supportnet models``):
A 1,254,250 (paper Table 2: 1.28M, -2.0%), B 1,300,618 (1.35M, -3.7%),
C 1,369,738 (1.40M, -2.2%). The layer lists are Springenberg's; B's gap is
explained in docs/models.md.

Initialisation: He (Kaiming-normal, fan-in) with zero biases by default (``init="he"``), as for
NIN; ``init="torch"`` keeps PyTorch's default, which left ALL-CNN-C at chance (loss 2.302) for
4 epochs on 3,000 Fashion-MNIST images at lr 0.05.
"""

from __future__ import annotations

from torch import nn

from ..layers import HardThreshold
from .registry import register_model


def _conv(cin, cout, k, stride=1, pad=None, act_layer=HardThreshold):
    pad = k // 2 if pad is None else pad
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=pad), act_layer()]


class AllCNN(nn.Module):
    """ALL-CNN ``variant`` in {A, B, C} for ``in_shape`` (C, H, W) and ``num_classes``."""

    def __init__(
        self,
        variant: str,
        in_shape=(3, 32, 32),
        num_classes=10,
        width=(96, 192),
        act_layer=HardThreshold,
        dropout=True,
        init: str = "he",
    ):
        super().__init__()
        c = in_shape[0]
        w1, w2 = width
        L: list[nn.Module] = [nn.Dropout(0.2) if dropout else nn.Identity()]
        a = dict(act_layer=act_layer)
        for cin, cout in ((c, w1), (w1, w2)):  # two stages: the variant's convs, then a strided conv
            if variant == "A":
                L += _conv(cin, cout, 5, **a)
            elif variant == "B":
                L += _conv(cin, cout, 5, **a) + _conv(cout, cout, 1, **a)
            else:
                L += _conv(cin, cout, 3, **a) + _conv(cout, cout, 3, **a)
            L += _conv(cout, cout, 3, stride=2, pad=1, **a)  # replaces 3x3 max pooling, stride 2: H -> H/2
            L += [nn.Dropout(0.5) if dropout else nn.Identity()]
        L += _conv(w2, w2, 3, pad=0, **a)  # valid 3x3: 8x8 -> 6x6 for 32x32 input
        L += _conv(w2, w2, 1, **a)
        L += [nn.Conv2d(w2, num_classes, 1), act_layer()]  # Springenberg's last 1x1 conv has a ReLU too
        L += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # global average pooling -> (B, K)
        self.net = nn.Sequential(*L)
        if init not in ("he", "torch"):
            raise TypeError(f"init must be 'he' or 'torch', got {init!r}")
        if init == "he":  # PyTorch's default init leaves this 9-layer net at chance (docs/models.md)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, C, H, W) -> (B, K)
        return self.net(x)


@register_model("allcnn-a", "ALL-CNN-A (Springenberg et al. 2015), strided convs, GAP")
def allcnn_a(in_shape=(3, 32, 32), num_classes=10, **kw):
    return AllCNN("A", in_shape, num_classes, **kw)


@register_model("allcnn-b", "ALL-CNN-B (Springenberg et al. 2015), strided convs, GAP")
def allcnn_b(in_shape=(3, 32, 32), num_classes=10, **kw):
    return AllCNN("B", in_shape, num_classes, **kw)


@register_model("allcnn-c", "ALL-CNN-C (Springenberg et al. 2015), strided convs, GAP")
def allcnn_c(in_shape=(3, 32, 32), num_classes=10, **kw):
    return AllCNN("C", in_shape, num_classes, **kw)
