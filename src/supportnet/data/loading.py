"""Loading a data set into tensors: subsets, validation hold-out, padding, normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..limits import check_memory
from .folder import load_stream
from .lookup import _resolve_files, find_root
from .preprocess import gcn_zca
from .registry import DataBundle, Split, get_spec


def _load_stream(name, data_dir, subset, val, seed, image_size, workers) -> DataBundle:
    if name != "imagefolder":
        raise DataError(f"data.stream=true works for imagefolder only, not {name!r}; drop data.stream")
    if workers < 0:
        raise DataError(f"data.workers={workers} is negative; use 0 (decode in the main process) or more")

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


def _test_index(n: int, k: int) -> torch.Tensor:
    """A fixed, sorted choice of ``k`` of ``n`` test examples (seed 0, independent of the run's seed)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].sort().values


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


def check_arrays(name: str, num_classes: int, xtr, ytr, xte, yte) -> None:
    """What every loader must return, checked once for all formats: images ``(N, C, H, W)`` of
    numbers (finite, if floats), at least one example per split, train and test images of one
    size, and integer labels, one per image, in ``0 .. num_classes - 1`` (``num_classes`` 0:
    the set's own count, an image folder's classes). Anything else is one :class:`DataError`."""
    fix = f"fetch the data set again (supportnet data fetch {name}) or fix its files"
    for split, x, y in (("training", xtr, ytr), ("test", xte, yte)):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 4 or x.dtype.kind not in "uif":
            raise DataError(f"{name} {split} images are {x.dtype} of shape {x.shape}, not (N, C, H, W) numbers; {fix}")
        if x.shape[0] == 0:
            raise DataError(f"{name} {split} split holds no examples; {fix}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError(f"{name} {split} images hold NaN or infinite values; {fix}")
        if y.dtype.kind not in "iu":
            what = "floats" if y.dtype.kind == "f" else f"{y.dtype} values"
            raise DataError(f"{name} {split} labels are {what}, not integers; {fix}")
        if y.shape != (x.shape[0],):
            raise DataError(f"{name} {split} split has {x.shape[0]} images but labels of shape {y.shape}; {fix}")
        if y.min() < 0 or (num_classes and y.max() >= num_classes):
            hi = num_classes - 1 if num_classes else "the number of classes"
            raise DataError(f"{name} {split} labels fall outside 0..{hi} (found {y.min()}..{y.max()}); {fix}")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(
            f"{name} test images are {'x'.join(map(str, xte.shape[1:]))} but training images are "
            f"{'x'.join(map(str, xtr.shape[1:]))}; give both splits one size (image folders: set data.image_size)"
        )


def _check_pad_fits(pad: int, xtr, xte, val_split) -> None:
    """The padded splits (float32) must fit in the memory available: one line, not an allocation failure."""
    n_all = xtr.shape[0] + xte.shape[0] + (val_split[0].shape[0] if val_split else 0)
    c, h, w = xtr.shape[1:]
    check_memory(4 * n_all * c * (h + 2 * pad) * (w + 2 * pad), f"data.pad={pad}", "use a smaller data.pad")


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
    xtr, ytr, xte, yte, root = _read_arrays(name, spec, data_dir, image_size, extra)
    xtr, ytr, val_split = _hold_out(xtr, ytr, subset, val, seed)
    if test_subset is not None and test_subset < xte.shape[0]:
        tidx = _test_index(xte.shape[0], test_subset)
        xte, yte = xte[tidx], yte[tidx]
    num_classes = spec.num_classes or int(max(ytr.max().item(), yte.max().item()) + 1)
    xtr, xte, val_split = _transform(xtr, xte, val_split, pad, preprocess, do_normalize)
    return DataBundle(
        name=name,
        train=Split(xtr.contiguous(), ytr),
        test=Split(xte.contiguous(), yte),
        num_classes=num_classes,
        in_shape=tuple(xtr.shape[1:]),  # type: ignore[arg-type]
        val=Split(*val_split) if val_split else None,
        root=str(root) if root else None,
    )


def _read_arrays(name: str, spec, data_dir, image_size, extra):
    """The official files as tensors (images float in [0, 1], labels int64), checked."""
    if name == "synthetic":
        xtr, ytr, xte, yte = _synthetic(seed=0)
        return xtr, ytr, xte, yte, None
    root = find_root(name, data_dir)
    assert spec.loader is not None
    xtr_np, ytr_np, xte_np, yte_np = spec.loader(root, _resolve_files(root, spec), image_size=image_size, extra=extra)
    check_arrays(name, spec.num_classes, xtr_np, ytr_np, xte_np, yte_np)
    xtr, xte = _to_float(xtr_np), _to_float(xte_np)
    ytr, yte = torch.from_numpy(ytr_np.astype(np.int64)), torch.from_numpy(yte_np.astype(np.int64))
    return xtr, ytr, xte, yte, root


def _hold_out(xtr, ytr, subset, val, seed):
    """A seeded validation hold-out of ``val`` examples and a seeded ``subset`` of the rest (kept in
    storage order); returns the training tensors and the validation pair (or None)."""
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
    return xtr, ytr, val_split


def _transform(xtr, xte, val_split, pad, preprocess, do_normalize):
    """Zero padding, then GCN + ZCA or per-channel standardisation (statistics from the training split)."""
    if pad:
        _check_pad_fits(pad, xtr, xte, val_split)
        p = [pad] * 4
        pad_fn = torch.nn.functional.pad
        xtr, xte = pad_fn(xtr, p), pad_fn(xte, p)
        if val_split is not None:
            val_split = (pad_fn(val_split[0], p), val_split[1])
    if preprocess == "gcn-zca":
        parts = gcn_zca(xtr, xte, *([val_split[0]] if val_split else []))
    elif do_normalize and preprocess == "standard":
        parts = normalize(xtr, xte, *([val_split[0]] if val_split else []))
    else:
        return xtr, xte, val_split
    xtr, xte = parts[0], parts[1]
    if val_split is not None:
        val_split = (parts[2], val_split[1])
    return xtr, xte, val_split
