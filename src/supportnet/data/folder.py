"""Streaming ImageNet-style folders: decode, random-resized crop, flip, normalise in DataLoader workers.

``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (or ``test/``) are
scanned once (paths and labels only) and decoded on the fly by ``data.workers``
DataLoader processes, so a set far larger than memory trains. The training view
is the standard ImageNet recipe (Szegedy et al. 2015, as used by the ResNet,
VGG and GoogLeNet reference trainings): a random-resized crop covering 8-100% of
the image with aspect ratio 3/4-4/3, resized to ``image_size``, a horizontal
flip, and normalisation by the ImageNet mean and std. Evaluation resizes the
shorter side to ``image_size * 256 / 224`` and takes the central crop.

The random numbers of example ``i`` are a hash of ``(seed, key, i)`` (see
:mod:`supportnet.data.augment`), so a view does not depend on the worker, the
batch or the number of workers. torchvision is not needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._optional import require
from ..errors import DataError
from .augment import view_randoms
from .batching import Inputs, collate
from .formats import imagefolder_classes, open_image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"}


def scan(split_dir: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], torch.Tensor]:
    """Class names (sorted folder names), image paths and labels under ``split_dir``."""
    if not split_dir.is_dir():
        raise DataError(
            f"image folder split {split_dir} does not exist; arrange the data as train/ and val/ "
            f"folders of class folders"
        )

    found = imagefolder_classes(split_dir, require_images=classes is None)
    classes = classes or found
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for c in found:
        if c not in index:
            raise DataError(f"class folder {split_dir / c} is not in train/; the splits must share classes")
        for p in sorted(split_dir.joinpath(c).iterdir()):
            if p.suffix.lower() in IMAGE_EXT:
                paths.append(p)
                labels.append(index[c])
    if not paths:
        raise DataError(f"no images found under {split_dir}; add .jpg or .png files to the class folders")
    return classes, paths, torch.tensor(labels, dtype=torch.int64)


class FolderStream(torch.utils.data.Dataset):
    """One split of an image folder, decoded on demand. ``len()``, ``y`` (labels) and
    :meth:`loader` are what the training loop uses; ``key`` selects the views."""

    def __init__(
        self, paths: list[Path], labels: torch.Tensor, size: int, train: bool, seed: int = 0, workers: int = 4
    ):
        self.paths, self.y, self.size, self.train, self.seed, self.workers = paths, labels, size, train, seed, workers
        self.key = 0

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, index: torch.Tensor) -> FolderStream:
        idx = index.tolist()
        return FolderStream([self.paths[i] for i in idx], self.y[index], self.size, self.train, self.seed, self.workers)

    @property
    def x(self) -> Inputs:
        """Decoded images as one tensor (small requests only)."""
        return Inputs(len(self), self.__getitem__)

    def _decode(self, i: int):

        return open_image(self.paths[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        from PIL import Image

        im = self._decode(i)
        s = self.size
        if self.train:
            r = view_randoms(self.seed, self.key, torch.tensor([i]), 5)[0].tolist()
            u = [(v % 1_000_003) / 1_000_003 for v in r]
            w, h = im.size
            area = w * h
            box = None
            for t in range(2):  # two tries from the hash, then the central crop (as the reference recipe)
                scale = 0.08 + (1.0 - 0.08) * u[(2 * t) % 5]
                logr = np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * u[(2 * t + 1) % 5]
                ar = float(np.exp(logr))
                cw, ch = int(round(np.sqrt(area * scale * ar))), int(round(np.sqrt(area * scale / ar)))
                if 0 < cw <= w and 0 < ch <= h:
                    x0 = int(u[4] * (w - cw + 1)) if w > cw else 0
                    y0 = int(u[(4 + t) % 5] * (h - ch + 1)) if h > ch else 0
                    box = (x0, y0, x0 + cw, y0 + ch)
                    break
            if box is None:
                c = min(w, h)
                box = ((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c)
            im = im.resize((s, s), Image.BILINEAR, box=box)
            if r[4] % 2:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            short = int(round(s * 256 / 224))
            w, h = im.size
            scale = short / min(w, h)
            im = im.resize((max(s, int(round(w * scale))), max(s, int(round(h * scale)))), Image.BILINEAR)
            w, h = im.size
            x0, y0 = (w - s) // 2, (h - s) // 2
            im = im.crop((x0, y0, x0 + s, y0 + s))
        a = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        a = (a - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        return a, int(self.y[i]), i

    def loader(self, order: torch.Tensor, batch_size: int):
        """Batches ``(x, y, index)`` in ``order``, decoded by ``workers`` processes."""
        chunks = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        dl = torch.utils.data.DataLoader(
            self,
            batch_sampler=chunks,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate,
            persistent_workers=False,
        )
        yield from dl


def load_stream(root: Path, size: int, seed: int = 0, workers: int = 4):
    """Train and test :class:`FolderStream` splits of an ImageNet-style folder."""
    require("PIL.Image")  # decoded in the workers: fail here, in one line, if Pillow is missing
    test_dir = root / "val" if (root / "val").is_dir() else root / "test"
    classes, ptr, ytr = scan(root / "train")
    _, pte, yte = scan(test_dir, classes)
    return (
        FolderStream(ptr, ytr, size, True, seed, workers),
        FolderStream(pte, yte, size, False, seed, workers),
        len(classes),
    )
