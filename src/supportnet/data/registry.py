"""Data set registry: the splits as tensors (:class:`Split`), a loaded set (:class:`DataBundle`) and
the registered data sets with their official files and checksums (:data:`DATASETS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import formats
from .idx import read_idx


@dataclass
class Split:
    """A data split held as tensors: ``x`` (N, C, H, W) float32, ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.x[index], self.y[index])


@dataclass
class DataBundle:
    name: str
    train: Split
    test: Split
    num_classes: int
    in_shape: tuple[int, int, int]
    val: Split | None = None
    root: str | None = None


@dataclass
class DatasetSpec:
    name: str
    num_classes: int
    files: dict[str, str]  # role -> official file name
    md5: dict[str, str] = field(default_factory=dict)  # official (compressed) file -> md5
    raw_sha256: dict[str, str] = field(default_factory=dict)  # file -> sha256 of the decompressed bytes
    urls: tuple[str, ...] = ()
    loader: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = None
    note: str = ""
    present: Callable[[Path], bool] | None = None  # custom 'is the set in this folder?' test
    member_md5: dict[str, str] = field(default_factory=dict)  # md5 of extracted members (relative paths)
    optional: tuple[str, ...] = ()  # files that may be absent (SVHN's extra split)


def _load_idx_set(root: Path, spec: DatasetSpec, **_):
    arrays = {role: read_idx(root / fname) for role, fname in spec.files.items()}
    xtr, ytr, xte, yte = arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]
    for xs, ys, split in ((xtr, ytr, "train"), (xte, yte, "test")):
        if xs.ndim != 3 or ys.ndim != 1 or xs.shape[0] != ys.shape[0]:
            raise DataError(
                f"{spec.name} {split} images {xs.shape} and labels {ys.shape} do not match; "
                f"fetch the data set again (supportnet data fetch {spec.name})"
            )
        if ys.size and (ys.min() < 0 or ys.max() >= spec.num_classes):
            raise DataError(
                f"{spec.name} {split} labels fall outside 0..{spec.num_classes - 1}; "
                f"fetch the data set again (supportnet data fetch {spec.name})"
            )
    return xtr[:, None], ytr, xte[:, None], yte


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        10,
        dict(_IDX_FILES),
        # Published by Zalando Research (github.com/zalandoresearch/fashion-mnist README).
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        # SHA-256 of the *decompressed* IDX bytes. Debian's dataset-fashion-mnist
        # (upstream git 55506a9) recompresses the .gz files, so their md5 differs
        # from the published one while the content is identical; these digests
        # were computed from that package and accept either compression.
        raw_sha256={
            "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        loader=_load_idx_set,
    ),
    "mnist": DatasetSpec(
        "mnist",
        10,
        dict(_IDX_FILES),
        # The checksums torchvision and the mirrors publish for LeCun's files.
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        loader=_load_idx_set,
    ),
    "kmnist": DatasetSpec(
        "kmnist",
        10,
        dict(_IDX_FILES),
        # Published by ROIS-CODH (github.com/rois-codh/kmnist), as torchvision uses them.
        md5={
            "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
        },
        urls=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        loader=_load_idx_set,
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        10,
        {"archive": "cifar-10-python.tar.gz"},
        md5={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        member_md5={
            "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
            "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
            "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
        },
        urls=("https://www.cs.toronto.edu/~kriz/",),
        loader=lambda root, spec, **_: _formats().load_cifar(root, "cifar10"),
        present=lambda d: _formats().cifar_present(d, "cifar10"),
        note="python-pickle tarball (read in place, no extraction needed)",
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        100,
        {"archive": "cifar-100-python.tar.gz"},
        md5={"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
        member_md5={
            "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
            "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        },
        urls=("https://www.cs.toronto.edu/~kriz/",),
        loader=lambda root, spec, **_: _formats().load_cifar(root, "cifar100"),
        present=lambda d: _formats().cifar_present(d, "cifar100"),
        note="python-pickle tarball, fine labels",
    ),
    "svhn": DatasetSpec(
        "svhn",
        10,
        {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"},
        md5={
            "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
            "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
        },
        urls=("http://ufldl.stanford.edu/housenumbers/",),
        optional=("extra",),
        loader=lambda root, spec, extra=False, **_: _formats().load_svhn(root, use_extra=extra),
        note="cropped digits .mat; data.extra=true adds extra_32x32.mat",
    ),
    "imagefolder": DatasetSpec(
        "imagefolder",
        0,
        {},
        loader=lambda root, spec, image_size=None, **_: _formats().load_imagefolder(root, image_size),
        present=lambda d: (d / "train").is_dir() and ((d / "val").is_dir() or (d / "test").is_dir()),
        note="ImageNet-style train/ and val/ class folders (pass --data-dir)",
    ),
    "synthetic": DatasetSpec("synthetic", 10, {}, note="generated in memory; for tests and smoke runs"),
}


def _formats():

    return formats


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(list_datasets())}")
    return DATASETS[name]
