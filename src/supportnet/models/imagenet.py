"""The networks of the paper's Table 8 (DSD on ImageNet): ResNet-18, VGG-16, GoogLeNet.

supportnet's own compact definitions (torchvision is never required). Each takes
``in_shape``: at 224x224 it is the ImageNet network of its paper; at small inputs
(height <= 64, e.g. 3x32x32) the stem is the usual CIFAR one, so the same layer
list trains on CIFAR-size data.

* ResNet-18 (He et al. 2016): 224 stem conv7x7/2 + max pool; small stem conv3x3/1.
  11,689,512 parameters at 224 with 1000 classes, as torchvision's.
* VGG-16 (Simonyan & Zisserman 2015, configuration D): 13 convolutions and 3 fully
  connected layers, no batch norm by default (``bn=True`` adds it).
  138,357,544 parameters at 224 with 1000 classes, as torchvision's. Small inputs
  use a 512-512 classifier on the 1x1x512 feature map.
* GoogLeNet (Szegedy et al. 2015): nine Inception modules with the paper's 5x5
  branch (torchvision uses 3x3 there), batch norm after each convolution (``bn``),
  no auxiliary classifiers.

Every ReLU is an ``act_layer`` (default :class:`HardThreshold`), one per site.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import HardThreshold
from .registry import register_model


def _small(in_shape) -> bool:
    return in_shape[1] <= 64


# ----------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, act_layer):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = act_layer()  # after the residual sum
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, in_shape=(3, 224, 224), num_classes=1000, act_layer=HardThreshold, width=64):
        super().__init__()
        c, w = in_shape[0], width
        if _small(in_shape):
            stem = [nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), act_layer()]
        else:
            stem = [nn.Conv2d(c, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), act_layer(), nn.MaxPool2d(3, 2, 1)]
        self.stem = nn.Sequential(*stem)
        layers, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride, act_layer), BasicBlock(cout, cout, 1, act_layer)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("resnet18", "ResNet-18 (He et al. 2016), Table 8; 3x32x32 input gives the CIFAR stem")
def resnet18(in_shape=(3, 224, 224), num_classes=1000, **kw):
    return ResNet18(in_shape, num_classes, **kw)


# ----------------------------------------------------------------------------- VGG-16

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    def __init__(
        self, in_shape=(3, 224, 224), num_classes=1000, act_layer=HardThreshold, bn=False, dropout=0.5, width_mult=1.0
    ):
        super().__init__()
        layers, c = [], in_shape[0]
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            v = max(1, int(v * width_mult))
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if bn:
                layers.append(nn.BatchNorm2d(v))
            layers.append(act_layer())
            c = v
        self.features = nn.Sequential(*layers)
        if _small(in_shape):
            side, hidden = 1, c
        else:
            side, hidden = 7, 4096
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.classifier = nn.Sequential(
            nn.Linear(c * side * side, hidden),
            act_layer(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            act_layer(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg16", "VGG-16 (Simonyan & Zisserman 2015, config D), Table 8; small inputs get a 512-wide head")
def vgg16(in_shape=(3, 224, 224), num_classes=1000, **kw):
    return VGG16(in_shape, num_classes, **kw)


# ----------------------------------------------------------------------------- GoogLeNet


def _conv(cin, cout, k, act_layer, bn, stride=1):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout, eps=1e-3))
    return nn.Sequential(*layers, act_layer())


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, cp, act_layer, bn):
        super().__init__()
        self.b1 = _conv(cin, c1, 1, act_layer, bn)
        self.b2 = nn.Sequential(_conv(cin, c3r, 1, act_layer, bn), _conv(c3r, c3, 3, act_layer, bn))
        self.b3 = nn.Sequential(_conv(cin, c5r, 1, act_layer, bn), _conv(c5r, c5, 5, act_layer, bn))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _conv(cin, cp, 1, act_layer, bn))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


#: (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj): Table 1 of Szegedy et al. (2015).
INCEPTION = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    def __init__(self, in_shape=(3, 224, 224), num_classes=1000, act_layer=HardThreshold, bn=True, dropout=0.4):
        super().__init__()
        c = in_shape[0]
        if _small(in_shape):
            self.stem = _conv(c, 192, 3, act_layer, bn)
        else:
            self.stem = nn.Sequential(
                _conv(c, 64, 7, act_layer, bn, stride=2),
                nn.MaxPool2d(3, 2, ceil_mode=True),
                _conv(64, 64, 1, act_layer, bn),
                _conv(64, 192, 3, act_layer, bn),
                nn.MaxPool2d(3, 2, ceil_mode=True),
            )
        blocks: list[nn.Module] = []
        for name, spec in INCEPTION.items():
            if name in ("4a", "5a"):
                blocks.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            blocks.append(Inception(*spec, act_layer=act_layer, bn=bn))
        self.inception = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.pool(self.inception(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(x, 1)))


@register_model("googlenet", "GoogLeNet (Szegedy et al. 2015), Table 8; no auxiliary heads; small stem at 32x32")
def googlenet(in_shape=(3, 224, 224), num_classes=1000, **kw):
    return GoogLeNet(in_shape, num_classes, **kw)
