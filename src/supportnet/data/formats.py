"""Readers for the official on-disk formats of the paper's data sets.

* CIFAR-10 / CIFAR-100: the "python version" tarballs (``cifar-10-python.tar.gz``,
  ``cifar-100-python.tar.gz``), read straight from the tarball or from the
  extracted folder. The batches are pickles; they are read with a restricted
  unpickler that admits only numpy array reconstruction, so a hostile file cannot
  run code.
* SVHN: the cropped-digit MATLAB files ``train_32x32.mat``, ``test_32x32.mat`` and
  the optional ``extra_32x32.mat`` (``X``: 32x32x3xN uint8, ``y``: labels 1-10,
  10 meaning digit 0), read with ``scipy.io.loadmat``.
* ``imagefolder``: ImageNet-style ``root/{train,val}/<class>/<image>``, decoded
  with Pillow into tensors of one size.

Each reader returns ``(x_train, y_train, x_test, y_test)`` numpy arrays with
images as ``(N, C, H, W)`` uint8.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .._optional import require
from ..errors import DataError

_FIX = "fetch it again (supportnet data fetch {name})"


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches contain: numpy arrays, dtypes and scalars."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            if module == "_codecs":
                import codecs

                return codecs.encode
            if name in ("ndarray", "dtype"):
                return getattr(np, name)
            import importlib

            try:  # numpy >= 2 keeps the implementation in numpy._core
                mod = importlib.import_module("numpy._core.multiarray")
            except ImportError:  # pragma: no cover - numpy 1.x
                mod = importlib.import_module("numpy.core.multiarray")
            return getattr(mod, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def safe_unpickle(data: bytes, what: str, name: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{what} is not a plain CIFAR batch ({e}); refusing to load it: " + _FIX.format(name=name)
        ) from None
    except Exception:  # noqa: BLE001 - any parse failure means a damaged file
        raise DataError(f"{what} is truncated or corrupt; " + _FIX.format(name=name)) from None
    if not isinstance(obj, dict):
        raise DataError(f"{what} is not a CIFAR batch (not a dict); " + _FIX.format(name=name))
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


CIFAR = {
    "cifar10": {
        "archive": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label": "labels",
    },
    "cifar100": {
        "archive": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label": "fine_labels",
    },
}


#: The largest archive member read (CIFAR-100's training batch is 155 MB).
MAX_CIFAR_MEMBER = 256 << 20


def cifar_present(root: Path, name: str) -> bool:
    c = CIFAR[name]
    folder = root / c["folder"]
    return (root / c["archive"]).is_file() or all((folder / f).is_file() for f in c["train"] + c["test"])


def _cifar_members(root: Path, name: str) -> dict[str, bytes]:
    c = CIFAR[name]
    folder = root / c["folder"]
    wanted = c["train"] + c["test"]
    if all((folder / f).is_file() for f in wanted):
        for f in wanted:
            if (folder / f).stat().st_size > MAX_CIFAR_MEMBER:
                raise DataError(f"{folder / f} is larger than a CIFAR batch; " + _FIX.format(name=name))
        return {f: (folder / f).read_bytes() for f in wanted}
    arch = root / c["archive"]
    out = {}
    try:
        with tarfile.open(arch) as tar:
            for f in wanted:
                try:
                    m = tar.getmember(f"{c['folder']}/{f}")
                except KeyError:
                    raise DataError(f"{arch} has no member {c['folder']}/{f}; " + _FIX.format(name=name)) from None
                if not m.isfile():
                    raise DataError(f"{arch}: {m.name} is not a regular file; " + _FIX.format(name=name))
                if m.size > MAX_CIFAR_MEMBER:  # a batch is about 31 MB; a bigger one is not CIFAR
                    raise DataError(
                        f"{arch}: {m.name} declares {m.size:,} bytes, more than a CIFAR batch "
                        f"({MAX_CIFAR_MEMBER:,}); " + _FIX.format(name=name)
                    )
                out[f] = tar.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{arch} is truncated or corrupt ({type(e).__name__}); " + _FIX.format(name=name)) from None
    return out


def load_cifar(root: Path, name: str):
    c = CIFAR[name]
    members = _cifar_members(root, name)

    def part(files):
        xs, ys = [], []
        for f in files:
            d = safe_unpickle(members[f], f"{name} batch {f}", name)
            try:  # no casts here: check_arrays refuses float, string or out-of-range labels
                x, y = np.asarray(d["data"]), np.asarray(d[c["label"]])
            except KeyError as e:
                raise DataError(f"{name} batch {f} lacks {e}; " + _FIX.format(name=name)) from None
            if x.dtype != np.uint8 or y.ndim != 1:
                raise DataError(
                    f"{name} batch {f} has data of type {x.dtype} and labels of shape {y.shape}, expected "
                    f"uint8 data and one label per image; " + _FIX.format(name=name)
                )
            if x.ndim != 2 or x.shape[1] != 3072 or x.shape[0] != y.shape[0]:
                raise DataError(
                    f"{name} batch {f} has data {x.shape} and {y.shape[0]} labels, expected "
                    f"(N, 3072) and N; " + _FIX.format(name=name)
                )
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = part(c["train"])
    xte, yte = part(c["test"])
    return xtr, ytr, xte, yte


SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def _load_mat(path: Path):
    try:
        loadmat = require("scipy.io").loadmat
    except ImportError:  # pragma: no cover
        raise DataError("reading SVHN needs scipy; pip install scipy") from None
    try:
        d = loadmat(str(path))
    except Exception as e:  # noqa: BLE001
        raise DataError(
            f"{path} is truncated or not a MATLAB file ({type(e).__name__}); " + _FIX.format(name="svhn")
        ) from None
    if "X" not in d or "y" not in d:
        raise DataError(f"{path} lacks the X and y arrays of SVHN; " + _FIX.format(name="svhn"))
    x, y = np.asarray(d["X"]), np.asarray(d["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DataError(
            f"{path} has X {x.shape} and {y.shape[0]} labels, expected (32, 32, 3, N) and N; "
            + _FIX.format(name="svhn")
        )
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path} has labels outside 1..10; " + _FIX.format(name="svhn"))
    y[y == 10] = 0  # SVHN writes digit 0 as label 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), y


def load_svhn(root: Path, use_extra: bool = False):
    xtr, ytr = _load_mat(root / SVHN_FILES["train"])
    if use_extra:
        xe, ye = _load_mat(root / SVHN_FILES["extra"])
        xtr, ytr = np.concatenate([xtr, xe]), np.concatenate([ytr, ye])
    xte, yte = _load_mat(root / SVHN_FILES["test"])
    return xtr, ytr, xte, yte


IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".gif", ".webp"}
#: The largest image decoded: 64 megapixels (a 192 MB RGB array). Pillow's own guard warns at
#: 89 MP and stops at 179 MP; a header that claims more than this is refused before decoding.
MAX_IMAGE_PIXELS = 64 << 20


def open_image(p: Path):
    """Decode the image at ``p`` as RGB, refusing one whose header claims more than
    :data:`MAX_IMAGE_PIXELS` before any pixel is decoded; a corrupt file is one DataError."""
    Image = require("PIL.Image")
    import warnings

    from PIL import UnidentifiedImageError

    too_large = f"more than the {MAX_IMAGE_PIXELS:,} pixels allowed (a decompression bomb?); shrink or remove it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own guard: one line
            with Image.open(p) as im:  # reads the header only
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(f"image {p} is too large: it claims {w}x{h} pixels, {too_large}")
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"image {p} is too large: {too_large}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"image {p} is truncated or not an image ({type(e).__name__}); remove or replace it") from None


def imagefolder_classes(split_dir: Path, require_images: bool = False) -> list[str]:
    """The class folders of ``split_dir`` (sorted). ``require_images``: a class folder without
    an image is an error (it would be a class no example has, and shift every later label)."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if require_images:
        for c in classes:
            if not any(q.suffix.lower() in IMAGE_EXT for q in (split_dir / c).iterdir()):
                raise DataError(f"class folder {split_dir / c} holds no images; add images to it or remove it")
    return classes


def load_imagefolder(root: Path, size: int | None = None):
    """``root/train/<class>/*`` and ``root/val/<class>/*`` (or ``test``) into uint8 tensors."""
    Image = require("PIL.Image")

    test_dir = root / "val" if (root / "val").is_dir() else root / "test"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        raise DataError(
            f"image folder {root} needs train/ and val/ (or test/) subfolders of class folders; "
            f"arrange it as ImageNet is"
        )
    classes = imagefolder_classes(root / "train", require_images=True)
    if not classes:
        raise DataError(f"image folder {root}/train has no class folders; add one folder per class")
    index = {c: i for i, c in enumerate(classes)}

    def read(split_dir: Path):
        xs, ys = [], []
        for c in imagefolder_classes(split_dir):
            if c not in index:
                raise DataError(f"class folder {split_dir / c} is not in train/; the splits must share classes")
            for p in sorted(split_dir.joinpath(c).iterdir()):
                if p.suffix.lower() not in IMAGE_EXT:
                    continue
                im = open_image(p)
                if size is not None:
                    im = im.resize((size, size), Image.BILINEAR)
                xs.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
                ys.append(index[c])
        if not xs:
            raise DataError(f"no images found under {split_dir}; add .png or .jpg files to the class folders")
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise DataError(
                f"images under {split_dir} differ in size {sorted(shapes)[:3]}...; set data.image_size to resize them"
            )
        return np.stack(xs), np.asarray(ys, dtype=np.int64)

    xtr, ytr = read(root / "train")
    xte, yte = read(test_dir)
    return xtr, ytr, xte, yte
