"""Data sets: registry, on-disk lookup, tensor-resident splits and loaders.

A data set is looked up in this order: ``--data-dir``, ``$SUPPORTNET_DATA``,
``~/.cache/supportnet``, ``/usr/share/datasets/<name>`` (where Debian's
``dataset-fashion-mnist`` puts its files). In each place both ``DIR`` and
``DIR/<name>`` are tried. The whole set is loaded into tensors once; batches
are index slices, so a loader yields ``(x, y, index)`` with no per-image Python
(the airbench habit).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .download import download, file_hash
from .idx import read_idx

__all__ = [
    "Split",
    "DataBundle",
    "DATASETS",
    "list_datasets",
    "load_data",
    "find_root",
    "check_dataset",
    "fetch_dataset",
    "batches",
    "epoch_order",
]


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


def _load_stream(name, data_dir, subset, val, seed, image_size, workers) -> DataBundle:
    if name != "imagefolder":
        raise DataError(f"data.stream=true works for imagefolder only, not {name!r}; drop data.stream")
    if workers < 0:
        raise DataError(f"data.workers={workers} is negative; use 0 (decode in the main process) or more")
    from .folder import load_stream

    root = find_root(name, data_dir)
    size = image_size or 224
    train, test, k = load_stream(root, size, seed=seed, workers=workers)
    n = len(train)
    if val < 0 or (subset is not None and subset <= 0):
        raise DataError("data.subset and data.val must be positive; fix the value or drop the option")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_split = None
    if val:
        if val >= n:
            raise DataError(f"data.val={val} leaves no training examples (the set has {n}); use a smaller --val")
        val_split = train.take(perm[:val].sort().values)
        val_split.train = False
        perm = perm[val:]
    if subset is not None:
        perm = perm[:subset]
    if subset is not None or val:
        train = train.take(perm.sort().values)
    return DataBundle(name, train, test, k, (3, size, size), val=val_split, root=str(root))


def _formats():
    from . import formats

    return formats


def _test_index(n: int, k: int) -> torch.Tensor:
    """A fixed, sorted choice of ``k`` of ``n`` test examples (seed 0, independent of the run's seed)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].sort().values


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(list_datasets())}")
    return DATASETS[name]


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Candidate folders for data set ``name``, in lookup order."""
    bases: list[Path] = []
    if data_dir is not None:
        bases.append(Path(data_dir).expanduser())
    if os.environ.get("SUPPORTNET_DATA"):
        bases.append(Path(os.environ["SUPPORTNET_DATA"]).expanduser())
    bases.append(Path("~/.cache/supportnet").expanduser())
    out = []
    for b in bases:
        out += [b, b / name]
    out.append(Path("/usr/share/datasets") / name)
    return out


def _has_files(d: Path, spec: DatasetSpec) -> bool:
    if spec.present is not None:
        return d.is_dir() and spec.present(d)
    return all(_find_file(d, f) is not None for r, f in spec.files.items() if r not in spec.optional)


def _find_file(d: Path, fname: str) -> Path | None:
    """``fname`` or, for a ``.gz`` name, its uncompressed form."""
    for cand in (d / fname, d / fname.removesuffix(".gz")):
        if cand.is_file():
            return cand
    return None


def find_root(name: str, data_dir: str | Path | None = None) -> Path:
    """The first folder that holds every file of ``name`` (see the module docstring)."""
    spec = get_spec(name)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataError(
            f"data directory {data_dir} does not exist; create it and run "
            f"'supportnet data fetch {name} --root {data_dir}', or drop --data-dir"
        )
    for d in search_dirs(name, data_dir):
        if _has_files(d, spec):
            return d
    if not spec.urls and name != "synthetic":  # nothing to fetch: say what the folder needs
        raise DataError(
            f"data set {name!r} not found (looked in {', '.join(str(d) for d in search_dirs(name, data_dir))}); "
            f"pass --data-dir with train/ and val/ (or test/) folders of class folders, as ImageNet is"
        )
    hint = "install Debian's package (apt-get install dataset-fashion-mnist) or " if name == "fashion-mnist" else ""
    raise DataError(
        f"data set {name!r} not found (looked in {', '.join(str(d) for d in search_dirs(name, data_dir))}); "
        f"{hint}run 'supportnet data fetch {name}'"
    )


def _resolve_files(root: Path, spec: DatasetSpec) -> DatasetSpec:
    files = {}
    for role, fname in spec.files.items():
        p = _find_file(root, fname)
        files[role] = p.name if p is not None else fname
    return DatasetSpec(**{**spec.__dict__, "files": files})


def _synthetic(seed: int = 0, n_train: int = 1024, n_test: int = 256, shape=(1, 16, 16), classes: int = 10):
    """A deterministic, learnable toy set: smooth class templates plus noise."""
    g = torch.Generator().manual_seed(1234 + seed)
    c, h, w = shape
    base = torch.randn(classes, c, h // 4, w // 4, generator=g)
    templates = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)

    def make(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = templates[y] + 0.8 * torch.randn(n, c, h, w, generator=g)
        return x, y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    return xtr, ytr, xte, yte


def _to_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.float()


def normalize(train: torch.Tensor, *others: torch.Tensor):
    """Per-channel mean/std normalisation, statistics from the training split only."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def load_data(
    name: str,
    data_dir: str | Path | None = None,
    subset: int | None = None,
    val: int = 0,
    seed: int = 0,
    pad: int = 0,
    do_normalize: bool = True,
    preprocess: str = "standard",
    image_size: int | None = None,
    extra: bool = False,
    stream: bool = False,
    workers: int = 4,
    test_subset: int | None = None,
) -> DataBundle:
    """Load ``name`` into tensors: optional seeded ``subset`` of the training split,
    a seeded validation hold-out of ``val`` examples, zero padding, normalisation.
    ``test_subset`` keeps a fixed subset of the test split, the same whatever ``seed``
    (so every seed of a study is scored on the same examples).
    ``stream=True`` (image folders only) decodes on the fly instead (:mod:`.folder`)."""
    spec = get_spec(name)
    if test_subset is not None and test_subset <= 0:
        raise DataError(f"data.test_subset={test_subset} must be positive; drop it to use the whole test set")
    if stream:
        b = _load_stream(name, data_dir, subset, val, seed, image_size, workers)
        if test_subset is not None and test_subset < len(b.test):
            b.test = b.test.take(_test_index(len(b.test), test_subset))
        return b
    if name == "synthetic":
        xtr, ytr, xte, yte = _synthetic(seed=0)
        root = None
    else:
        root = find_root(name, data_dir)
        assert spec.loader is not None
        xtr_np, ytr_np, xte_np, yte_np = spec.loader(
            root, _resolve_files(root, spec), image_size=image_size, extra=extra
        )
        xtr, xte = _to_float(xtr_np), _to_float(xte_np)
        ytr, yte = torch.from_numpy(ytr_np.astype(np.int64)), torch.from_numpy(yte_np.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    n = xtr.shape[0]
    if val < 0 or (subset is not None and subset <= 0):
        raise DataError("data.subset and data.val must be positive; fix the value or drop the option")
    perm = torch.randperm(n, generator=g)
    val_split = None
    if val:
        if val >= n:
            raise DataError(f"data.val={val} leaves no training examples (the set has {n}); use a smaller --val")
        vidx, perm = perm[:val], perm[val:]
        val_split = (xtr[vidx], ytr[vidx])
    if subset is not None and subset < perm.numel():
        perm = perm[:subset]
    if subset is not None or val:
        idx = perm.sort().values
        xtr, ytr = xtr[idx], ytr[idx]
    if test_subset is not None and test_subset < xte.shape[0]:
        tidx = _test_index(xte.shape[0], test_subset)
        xte, yte = xte[tidx], yte[tidx]
    if pad:
        p = [pad] * 4
        pad_fn = torch.nn.functional.pad
        xtr, xte = pad_fn(xtr, p), pad_fn(xte, p)
        if val_split is not None:
            val_split = (pad_fn(val_split[0], p), val_split[1])
    num_classes = spec.num_classes or int(max(ytr.max().item(), yte.max().item()) + 1)
    if preprocess == "gcn-zca":
        from .preprocess import gcn_zca

        parts = gcn_zca(xtr, xte, *([val_split[0]] if val_split else []))
        xtr, xte = parts[0], parts[1]
        if val_split is not None:
            val_split = (parts[2], val_split[1])
    elif do_normalize and preprocess == "standard":
        parts = normalize(xtr, xte, *([val_split[0]] if val_split else []))
        xtr, xte = parts[0], parts[1]
        if val_split is not None:
            val_split = (parts[2], val_split[1])
    return DataBundle(
        name=name,
        train=Split(xtr.contiguous(), ytr),
        test=Split(xte.contiguous(), yte),
        num_classes=num_classes,
        in_shape=tuple(xtr.shape[1:]),  # type: ignore[arg-type]
        val=Split(*val_split) if val_split else None,
        root=str(root) if root else None,
    )


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled example order of one epoch: a function of ``(seed, epoch)`` only,
    so every method of a comparison sees the same data order."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) + 17)
    return torch.randperm(n, generator=g)


def batches(
    split: Split, batch_size: int, order: torch.Tensor | None = None, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y, index)`` batches of ``split`` in ``order`` (default: as stored)."""
    if order is None:
        order = torch.arange(len(split))
    if hasattr(split, "loader"):  # a streaming split decodes in worker processes
        yield from split.loader(order[start * batch_size :], batch_size)
        return
    n = len(order)  # an order may cover only part of the split (a rank's shard)
    for i in range(start * batch_size, n, batch_size):
        idx = order[i : i + batch_size]
        yield split.x[idx], split.y[idx], idx


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


# -- verification and fetching --------------------------------------------------
def verify_file(path: Path, spec: DatasetSpec, official_name: str) -> tuple[bool, str]:
    """Whether ``path`` matches the published md5 or the known digest of its content."""
    md5 = spec.md5.get(official_name)
    if md5 and path.name == official_name and file_hash(path, "md5") == md5:
        return True, "md5 matches the published checksum"
    raw = spec.raw_sha256.get(official_name)
    if raw:
        import gzip
        import hashlib

        h = hashlib.sha256()
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except (OSError, EOFError):
            return False, "corrupt or truncated gzip stream"
        if h.hexdigest() == raw:
            return True, "decompressed content matches the known sha256"
        return False, "content checksum mismatch"
    if md5:
        return False, "md5 does not match the published checksum"
    return False, "no checksum is known for this file"


def check_dataset(name: str, data_dir: str | Path | None = None) -> list[dict]:
    """Report, per file, where it was found and whether it verifies."""
    spec = get_spec(name)
    if name == "synthetic":
        return [{"file": "(generated)", "path": None, "ok": True, "how": "generated in memory"}]
    try:
        root = find_root(name, data_dir)
    except DataError:
        return [{"file": f, "path": None, "ok": False, "how": "not found"} for f in spec.files.values()] or [
            {"file": "train/, val/", "path": None, "ok": False, "how": "not found"}
        ]
    rows = []
    if name == "imagefolder":
        return [
            {
                "file": "train/, val/",
                "path": str(root),
                "ok": True,
                "how": "layout found (image folders have no published checksum)",
            }
        ]
    for role, fname in spec.files.items():
        p = _find_file(root, fname)
        if p is None:
            if role in spec.optional:
                rows.append({"file": fname, "path": None, "ok": True, "how": "optional, absent"})
                continue
            members = {k: v for k, v in spec.member_md5.items()}
            if members and all((root / k).is_file() for k in members):
                for k, md5 in members.items():
                    ok = file_hash(root / k, "md5") == md5
                    rows.append(
                        {
                            "file": k,
                            "path": str(root / k),
                            "ok": ok,
                            "how": "extracted member md5 " + ("matches" if ok else "does NOT match"),
                        }
                    )
                continue
            rows.append({"file": fname, "path": None, "ok": False, "how": "not found"})
            continue
        ok, how = verify_file(p, spec, fname)
        rows.append({"file": fname, "path": str(p), "ok": ok, "how": how})
    return rows


def fetch_dataset(name: str, root: str | Path | None = None, quiet: bool = False, extract: bool = False) -> Path:
    """Download ``name`` into ``root`` (default ``~/.cache/supportnet/<name>``), verified.

    Tarballs are read in place; ``extract=True`` also unpacks them with
    :func:`~supportnet.data.download.safe_extract` (no absolute paths, ``..`` or escaping links).
    """
    spec = get_spec(name)
    if not spec.urls:
        raise DataError(f"data set {name!r} cannot be downloaded ({spec.note or 'no public URL'})")
    dest = Path(root).expanduser() if root else Path("~/.cache/supportnet").expanduser() / name
    dest.mkdir(parents=True, exist_ok=True)
    for role, fname in spec.files.items():
        if role in spec.optional:
            continue
        target = dest / fname
        if target.is_file() and verify_file(target, spec, fname)[0]:
            continue
        last: Exception | None = None
        for base in spec.urls:
            try:
                download(base + fname, target, md5=spec.md5.get(fname), quiet=quiet)
                last = None
                break
            except DataError as e:
                last = e
        if last is not None:
            raise last
        if extract and fname.endswith((".tar.gz", ".tgz", ".tar")):
            from .download import safe_extract

            safe_extract(target, dest)
    return dest
