"""The built-in models as ``supportnet models`` lists them, without importing torch.

Counting parameters needs torch (the models are built on the meta device), and importing
torch takes longer than the listing itself; so the table of the built-in models is kept here,
written by ``python -m supportnet.model_table --write`` from the live registry.
``tests/test_models.py`` checks that it equals what the registry computes, so a model added or
changed without rewriting the table fails the tests.
"""

# ruff: noqa: E501 (the table's rows are written by write(), one per line)
from __future__ import annotations

import sys
from pathlib import Path

# (name, listed input shape (C, H, W), parameter count at that shape and its classes, note)
# fmt: off
TABLE: list[tuple[str, tuple[int, int, int], int, str]] = [
    # BEGIN TABLE
    ('allcnn-a', (3, 32, 32), 1254250, 'ALL-CNN-A (Springenberg et al. 2015), strided convs, GAP'),
    ('allcnn-b', (3, 32, 32), 1300618, 'ALL-CNN-B (Springenberg et al. 2015), strided convs, GAP'),
    ('allcnn-c', (3, 32, 32), 1369738, 'ALL-CNN-C (Springenberg et al. 2015), strided convs, GAP'),
    ('convnet-s', (1, 28, 28), 458570, '4 threshold layers, strided convs, sized for 1x28x28 (~0.5M params)'),
    ('googlenet', (3, 224, 224), 7005832, 'GoogLeNet (Szegedy et al. 2015), Table 8; no auxiliary heads; small stem at 32x32'),
    ('mlp', (1, 28, 28), 269322, 'two hidden layers of 256 units'),
    ('nin', (3, 32, 32), 966986, 'Network in Network (Lin et al. 2014), CIFAR/SVHN form, 3x32x32'),
    ('nin-mnist', (1, 28, 28), 251370, 'Network in Network, MNIST form, 1x28x28 (narrower blocks)'),
    ('resnet18', (3, 224, 224), 11689512, 'ResNet-18 (He et al. 2016), Table 8; 3x32x32 input gives the CIFAR stem'),
    ('vgg16', (3, 224, 224), 138357544, 'VGG-16 (Simonyan & Zisserman 2015, config D), Table 8; small inputs get a 512-wide head'),
    # END TABLE
]
# fmt: on


def default_classes(shape: tuple[int, int, int]) -> int:
    """The classes a model is listed with: ImageNet's 1000 at ImageNet size, else 10."""
    return 1000 if shape[1] >= 128 else 10


def live_table() -> list[tuple[str, tuple[int, int, int], int, str]]:
    """The table computed from the registry (imports torch)."""
    from .models import default_input, list_models, model_note, param_count

    rows = []
    for name in list_models():
        shape = default_input(name)
        n = param_count(name, in_shape=shape, num_classes=default_classes(shape))
        rows.append((name, shape, n, model_note(name)))
    return rows


def write() -> None:
    """Rewrite :data:`TABLE` in this file from :func:`live_table`."""
    path = Path(__file__)
    text = path.read_text()
    head, rest = text.split("    # BEGIN TABLE\n", 1)
    _, tail = rest.split("    # END TABLE\n", 1)
    body = "".join(f"    {row!r},\n" for row in live_table())
    path.write_text(f"{head}    # BEGIN TABLE\n{body}    # END TABLE\n{tail}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        print(f"model_table: error: unknown arguments {sys.argv[1:]}; run: python -m supportnet.model_table --write",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    write()
