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


def _idx_spec(name: str, md5: tuple[str, ...], urls: tuple[str, ...], raw_sha256: tuple[str, ...] = ()) -> DatasetSpec:
    """A 10-class set of MNIST's four IDX files; the digests in :data:`_IDX_FILES`'s order."""
    files = list(_IDX_FILES.values())
    return DatasetSpec(name, 10, dict(_IDX_FILES), md5=dict(zip(files, md5)), raw_sha256=dict(zip(files, raw_sha256)),
                       urls=urls, loader=_load_idx_set)  # fmt: skip


def _cifar_spec(name: str, classes: int, archive: str, md5: str, members: dict[str, str], note: str) -> DatasetSpec:
    """A CIFAR python-pickle tarball, read in place (its members' md5 checked)."""
    return DatasetSpec(name, classes, {"archive": archive}, md5={archive: md5}, member_md5=members,
                       urls=("https://www.cs.toronto.edu/~kriz/",),
                       loader=lambda root, spec, **_: _formats().load_cifar(root, name),
                       present=lambda d: _formats().cifar_present(d, name), note=note)  # fmt: skip


DATASETS: dict[str, DatasetSpec] = {
    # Published by Zalando Research (github.com/zalandoresearch/fashion-mnist README); the
    # SHA-256 of the *decompressed* IDX bytes beside them: Debian's dataset-fashion-mnist
    # (upstream git 55506a9) recompresses the .gz files, so their md5 differs from the
    # published one while the content is identical; these digests were computed from that
    # package and accept either compression.
    "fashion-mnist": _idx_spec(
        "fashion-mnist",
        (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
    # The checksums torchvision and the mirrors publish for LeCun's files.
    "mnist": _idx_spec(
        "mnist",
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
    # Published by ROIS-CODH (github.com/rois-codh/kmnist), as torchvision uses them.
    "kmnist": _idx_spec(
        "kmnist",
        (
            "bdb82020997e1d708af4cf47b453dcf7",
            "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7",
            "7320c461ea6c1c855c0b718fb2a4b134",
        ),
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    ),
    "cifar10": _cifar_spec(
        "cifar10",
        10,
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        {
            f"cifar-10-batches-py/{k}": v
            for k, v in (
                ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
                ("test_batch", "40351d587109b95175f43aff81a1287e"),
            )
        },
        "python-pickle tarball (read in place, no extraction needed)",
    ),
    "cifar100": _cifar_spec(
        "cifar100",
        100,
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        {
            "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
            "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        },
        "python-pickle tarball, fine labels",
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
