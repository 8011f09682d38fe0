"""The bad-input corpus: every case exits 2 with one line naming the problem and the fix,
prints no traceback, and modifies or deletes none of the user's files (SHA-256 before and after).

One row of ``CASES`` per case (``C(id, category, argv, words, files=...)``; the harness is
``BadCase``/``run_bad_case`` in conftest.py). Static inputs live in tests/bad_inputs/; the others
(data files, checkpoints, mask stores, run folders) are written by the builders below into the
case's own folder. Cases run in this process (``supportnet.cli.main``) except the
denial-of-service ones (``dos=True``), which run in a fresh process that must finish within
10 s with a peak RSS under 500 MB. docs/reliability.md maps each class to its cases.
"""

import functools
import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, BadCase, run_bad_case

BAD = ROOT / "tests" / "bad_inputs"


# ----------------------------------------------------------------------------- builders
def _idx(images: int, labels: int, magic: int = 2051, truncate: bool = False) -> dict[str, bytes]:
    img = struct.pack(">IIII", magic, images, 28, 28) + bytes(images * 28 * 28)
    lab = struct.pack(">II", 2049, labels) + bytes(labels)
    if truncate:
        img = img[: len(img) // 2]
    files = {}
    for split in ("train", "t10k"):
        files[f"fm/{split}-images-idx3-ubyte.gz"] = gzip.compress(img)
        files[f"fm/{split}-labels-idx1-ubyte.gz"] = gzip.compress(lab)
    return files


def _checkpoint(kind: str) -> dict[str, bytes]:
    import tempfile

    from supportnet.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.pt"
        save_checkpoint(p, {"state_dict": {"w": torch.zeros(1000)}, "config": {}})  # the middle byte: a weight
        raw = bytearray(p.read_bytes())
    if kind == "truncated":
        raw = raw[: len(raw) // 2]
    elif kind == "bitflip":
        raw[len(raw) // 2] ^= 0x10
    elif kind == "version":
        buf = io.BytesIO()
        torch.save({"format": 99, "sha256": "", "body": torch.zeros(1, dtype=torch.uint8)}, buf)
        raw = bytearray(buf.getvalue())
    elif kind == "foreign":
        buf = io.BytesIO()
        torch.save({"weights": torch.zeros(2)}, buf)
        raw = bytearray(buf.getvalue())
    return {"run/checkpoint.pt": bytes(raw), "run/config.yaml": b"data:\n  name: synthetic\n"}


def _store(kind: str) -> dict[str, bytes]:
    import tempfile

    from supportnet.masks import MaskStore

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.smask"
        st = MaskStore(8, [(4,), (2, 3)], path=p)
        st.write(torch.arange(8), [torch.ones(8, 4, dtype=torch.bool), torch.zeros(8, 2, 3, dtype=torch.bool)])
        st.finalize()
        del st
        raw = bytearray(p.read_bytes())
    if kind == "truncated":
        raw = raw[:-3]
    elif kind == "bitflip":
        raw[-2] ^= 0x04
    elif kind == "version":
        raw[8:12] = struct.pack("<I", 7)
    elif kind == "negative":
        head = raw[:256].decode("latin-1")
        raw[:256] = head.replace('"n":8', '"n":-8').encode("latin-1")[:256]
    elif kind == "foreign":
        raw = bytearray(b"not a mask store at all" * 4)
    return {"m.smask": bytes(raw)}


def _folder(kind: str) -> dict[str, bytes]:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    files = {"img/train/a/0.png": png, "img/train/b/0.png": png}
    if kind == "corrupt":
        files.update({"img/val/a/0.png": png[:20], "img/val/b/0.png": png})
    return files


# ----------------------------------------------------------------------------- new builders
def _raw_idx(dims: tuple, code: int = 0x08, body: bytes | None = None) -> bytes:
    """An IDX file with any header (dims may overflow int64) and ``body`` (default: what dims say)."""
    itemsize = {0x08: 1, 0x0D: 4}[code]
    if body is None:
        n = 1
        for d in dims:
            n *= d
        body = bytes(n * itemsize)
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body


def _idx_set(**override) -> dict[str, bytes]:
    """A valid 4-file IDX set in fm/ (gzip), with any file replaced (bytes) or left out (None)."""
    files = {
        "train-images-idx3-ubyte.gz": _raw_idx((4, 28, 28)),
        "train-labels-idx1-ubyte.gz": _raw_idx((4,), body=bytes([0, 1, 2, 3])),
        "t10k-images-idx3-ubyte.gz": _raw_idx((2, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": _raw_idx((2,), body=bytes([4, 5])),
    }
    for k, v in override.items():
        files[k.replace("_", "-") + "-ubyte.gz"] = v
    return {f"fm/{k}": gzip.compress(v, mtime=0) for k, v in files.items() if v is not None}


def _idx_symlink_loop(folder: Path) -> None:
    for rel, data in _idx_set(**{"train_images_idx3": None}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "fm" / "train-images-idx3-ubyte.gz").symlink_to("train-images-idx3-ubyte.gz")


def _idx_bomb() -> dict[str, bytes]:
    """A 46 kB gzip that declares and holds 47 MB of zeros (60000 images): a ratio of 1000."""
    return _idx_set(train_images_idx3=_raw_idx((60000, 28, 28)), train_labels_idx1=_raw_idx((60000,)))


def _cifar(labels=(0, 1, 2, 3), data=None) -> dict[str, bytes]:
    """An extracted CIFAR-10 folder whose six batches hold 4 images each and ``labels``."""
    x = np.zeros((4, 3072), dtype=np.uint8) if data is None else data
    batch = pickle.dumps({b"data": x, b"labels": list(labels)}, protocol=2)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {f"c/cifar-10-batches-py/{n}": batch for n in names}


def _cifar_tar_member_too_large() -> dict[str, bytes]:
    """A CIFAR archive whose first member's header declares 300 MB (the file is 1 kB: tarfile finds
    the data missing before the member-size bound is reached)."""
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = 300 << 20
    return {"c/cifar-10-python.tar.gz": info.tobuf(format=tarfile.USTAR_FORMAT) + bytes(512)}


def _png(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w`` x ``h`` RGB pixels, with one tiny (truncated) data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def _images(**extra: bytes) -> dict[str, bytes]:
    """An image folder img/ (train/a, train/b, val/a, val/b, 8x8 PNGs) plus ``extra`` files."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    files = {f"img/{s}/{c}/0.png": png for s in ("train", "val") for c in ("a", "b")}
    files.update({k.replace("__", "/"): v for k, v in extra.items()})
    return files


def _png_of(size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _empty_class(folder: Path) -> None:
    for rel, data in _images().items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "img" / "train" / "0-empty").mkdir()


def _store_header(meta: dict | str, payload: bytes = b"") -> bytes:
    """A mask store with any header ``meta`` (the size check reads the real file)."""
    from supportnet.masks import MAGIC, VERSION

    text = (meta if isinstance(meta, str) else json.dumps(meta, separators=(",", ":"))).encode()
    hlen = (16 + len(text) + 63) // 64 * 64
    return MAGIC + struct.pack("<II", VERSION, hlen) + text.ljust(hlen - 16, b" ") + payload


_META = {"bits": 8, "row_bytes": 1, "checksum": "0" * 32, "digest": "blake2b-128"}


def _stores(**metas) -> dict[str, bytes]:
    return {"m.smask": _store_header({**_META, **metas})}


TINY = [
    "--data",
    "synthetic",
    "--epochs",
    "1",
    "--subset",
    "64",
    "--quiet",
    "--set",
    "model.kwargs={width: 4, hidden: 8}",
    "--set",
    "train.train_eval_size=0",
]


@functools.lru_cache(maxsize=1)
def _finished() -> dict[str, bytes]:
    """The files of a real finished run (trained once, in this process): run/config.yaml, final.pt, ..."""
    import tempfile

    from supportnet.config import load_config
    from supportnet.train import fit

    with tempfile.TemporaryDirectory() as d:
        sets = [("data.name", "synthetic"), ("data.subset", 64), ("train.epochs", 1), ("quiet", True)]
        sets += [("model.kwargs", {"width": 4, "hidden": 8}), ("train.train_eval_size", 0), ("out", f"{d}/run")]
        run = fit(load_config(None, sets))
        return {f"run/{p.name}": p.read_bytes() for p in run.iterdir() if p.is_file()}


def _finished_run() -> dict[str, bytes]:
    return dict(_finished())


def _finished_with_tmp() -> dict[str, bytes]:
    return {**_finished(), "run/.checkpoint.pt.abcd1234.tmp": b"a killed run's temporary"}


def _finished_edited() -> dict[str, bytes]:
    """A finished run whose config.yaml was edited afterwards (2 epochs instead of 1)."""
    files = dict(_finished())
    files["run/config.yaml"] = files["run/config.yaml"].replace(b"\ntrain:\n  epochs: 1\n", b"\ntrain:\n  epochs: 2\n")
    assert files["run/config.yaml"] != _finished()["run/config.yaml"]
    return files


@functools.lru_cache(maxsize=1)
def _finished_dsd() -> dict[str, bytes]:
    """The files of a real finished DSD run (one epoch per phase, magnitude pruning), in d/."""
    import tempfile

    from supportnet.config import load_config
    from supportnet.dsd import dsd

    with tempfile.TemporaryDirectory() as d:
        sets = [("data.name", "synthetic"), ("data.subset", 64), ("quiet", True), ("train.train_eval_size", 0)]
        sets += [("model.kwargs", {"width": 4, "hidden": 8}), ("dsd.prune", "magnitude"), ("dsd.dense_epochs", 1)]
        sets += [("dsd.sparse_epochs", 1), ("dsd.redense_epochs", 1)]
        dsd(load_config(None, sets), f"{d}/d", log=lambda *_: None)
        root = Path(d)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _finished_dsd_run() -> dict[str, bytes]:
    return dict(_finished_dsd())


def _finished_dsd_edited() -> dict[str, bytes]:
    """A finished DSD run whose dsd-config.yaml was edited afterwards (another dsd.sparsity)."""
    files = dict(_finished_dsd())
    files["d/dsd-config.yaml"] = files["d/dsd-config.yaml"].replace(b"  sparsity: 0.3\n", b"  sparsity: 0.5\n")
    assert files["d/dsd-config.yaml"] != _finished_dsd()["d/dsd-config.yaml"]
    return files


_SETTINGS = "# réglages\ntrain:\n  epochs: 1\n"  # (é: one byte, 0xE9, in Latin-1; two in UTF-8)


def _dsd_folder() -> dict[str, bytes]:
    cfg = b"data:\n  name: synthetic\nmodel:\n  kwargs: {width: 4, hidden: 8}\n"
    return {"d/dsd-config.yaml": cfg, "d/dense/config.yaml": cfg, "d/dense/final.pt": b"weights"}


def _study_other_config() -> dict[str, bytes]:
    """A study folder whose seed0/sgd run was started with another config (5 epochs)."""
    return {
        "st/seed0/sgd/config.yaml": b"data:\n  name: synthetic\ntrain:\n  epochs: 5\n",
        "st/seed0/sgd/final.pt": b"w",
    }


def _fifo(name: str):
    def make(folder: Path) -> None:
        os.mkfifo(folder / name)

    return make


def _loop(name: str):
    def make(folder: Path) -> None:
        (folder / name).symlink_to(name)

    return make


def _big_config() -> dict[str, bytes]:
    return {"big.yaml": b"train:\n  epochs: 1\n" + b"# padding\n" * 120_000}


C = BadCase
Y = BAD  # static YAML files


# ----------------------------------------------------------------------------- the corpus
CASES = [
    # config files
    C("yaml-malformed", "config", ["train", "--config", Y / "malformed.yaml"], ["not valid YAML"]),
    C("yaml-list", "config", ["train", "--config", Y / "list.yaml"], ["mapping"]),
    C("yaml-unknown-key", "config", ["train", "--config", Y / "unknown_key.yaml"], ["unknown config key"]),
    C("yaml-wrong-type", "config", ["train", "--config", Y / "wrong_type.yaml"], ["train.epochs", "int"]),
    C("yaml-negative-epochs", "config", ["train", "--config", Y / "negative_epochs.yaml"], ["train.epochs"]),
    C("yaml-unknown-method", "config", ["train", "--config", Y / "unknown_method.yaml"], ["support.method"]),
    C("yaml-tau-length", "config", ["train", "--config", Y / "tau_length.yaml", "--out", "o"], ["support.tau"]),
    C("yaml-hostile-tag", "config", ["train", "--config", Y / "hostile_tag.yaml"], ["not valid YAML"]),
    C("yaml-section-scalar", "config", ["train", "--config", Y / "section_not_mapping.yaml"], ["mapping"]),
    C("yaml-binary", "config", ["train", "--config", Y / "binary.yaml"], ["config file", "not a text file"]),
    # a config saved in another encoding is text: the encoding is named, with the fix (issue 25)
    C(
        "config-latin1",
        "config",
        ["train", "--config", "c.yaml"],
        ["c.yaml is not UTF-8", "byte 0xE9 at offset 3", "save it as UTF-8"],
        files={"c.yaml": _SETTINGS.encode("latin-1")},
    ),
    C(
        "config-utf16-bom",
        "config",
        ["train", "--config", "c.yaml"],
        ["c.yaml is not UTF-8 (it has a UTF-16 byte-order mark)", "save it as UTF-8"],
        files={"c.yaml": _SETTINGS.encode("utf-16")},
    ),
    C(
        "config-utf16-no-bom",
        "config",
        ["train", "--config", "c.yaml"],
        ["not UTF-8", "UTF-16BE without a byte-order mark", "save it as UTF-8"],
        files={"c.yaml": _SETTINGS.encode("utf-16-be")},
    ),
    C(
        "config-utf32-bom",
        "config",
        ["dsd", "--config", "c.yaml"],
        ["not UTF-8 (it has a UTF-32 byte-order mark)", "save it as UTF-8"],
        files={"c.yaml": _SETTINGS.encode("utf-32")},
    ),
    C(
        "config-latin1-resume",
        "config",
        ["train", "--resume", "run"],
        ["run/config.yaml is not UTF-8", "byte 0xE9", "save it as UTF-8"],
        files={**_checkpoint("ok"), "run/config.yaml": _SETTINGS.encode("cp1252")},
    ),
    C("yaml-dsd-sparsity", "config", ["dsd", "--config", Y / "dsd_sparsity.yaml"], ["dsd"]),
    C("yaml-negative-subset", "config", ["train", "--config", Y / "negative_subset.yaml"], ["subset"]),
    C(
        "yaml-bad-model-kwarg",
        "config",
        ["train", "--config", Y / "bad_model_kwarg.yaml", "--out", "o"],
        ["model.kwargs"],
    ),
    C("config-missing", "config", ["train", "--config", "nope.yaml"], ["does not exist"]),
    C("yaml-duplicate-key", "config", ["train", "--config", Y / "duplicate_key.yaml"], ["'lr' twice", "line 4"]),
    C("yaml-recursive-alias", "config", ["train", "--config", Y / "recursive_alias.yaml"], ["alias *k"]),
    C("yaml-undefined-alias", "config", ["train", "--config", Y / "undefined_alias.yaml"], ["not valid YAML"]),
    C("yaml-huge-int", "config", ["train", "--config", Y / "huge_int.yaml"], ["not valid YAML", "digits"]),
    C("yaml-seed-overflow", "config", ["train", "--config", Y / "seed_overflow.yaml"], ["train.seed", "64 bits"]),
    C("yaml-nan-lr", "config", ["train", "--config", Y / "nan_lr.yaml"], ["train.lr", "finite"]),
    C("yaml-inf-tau-list", "config", ["train", "--config", Y / "inf_tau.yaml"], ["support.tau", "finite"]),
    C("config-dir", "config", ["train", "--config", "."], ["not a file", "folder"]),
    C("config-dev-null", "config", ["train", "--config", "/dev/null"], ["not a file", "device"]),
    C("config-fifo", "config", ["train", "--config", "f.yaml"], ["not a file"], files=_fifo("f.yaml")),
    C("config-symlink-loop", "config", ["train", "--config", "l.yaml"], ["symlink loop"], files=_loop("l.yaml")),
    # denial of service from tiny config files: refused within the bounds
    C("dos-billion-laughs", "dos", ["train", "--config", Y / "billion_laughs.yaml"], ["expands"], dos=True),
    C("dos-laughs-6", "dos", ["train", "--config", Y / "laughs6.yaml", "--out", "o"], ["expands"], dos=True),
    C("dos-deep-nesting", "dos", ["train", "--config", Y / "deep_nesting.yaml"], ["deeper than 32"], dos=True),
    C("dos-config-too-large", "dos", ["train", "--config", "big.yaml"], ["bytes"], files=_big_config, dos=True),
    # command-line arguments
    C("cli-unknown-command", "cli", ["fly"], ["invalid choice"]),
    C("cli-epochs-not-int", "cli", ["train", "--epochs", "abc"], ["--epochs"]),
    C("cli-set-no-equals", "cli", ["train", "--set", "train.epochs"], ["key=value"]),
    C("cli-set-unknown-section", "cli", ["train", "--set", "trian.epochs=3"], ["unknown config key"]),
    C("cli-unknown-model", "cli", ["train", "--model", "resnet-9000", "--data", "synthetic"], ["unknown model"]),
    C("cli-unknown-data", "cli", ["train", "--data", "imagenet-22k"], ["imagenet-22k"]),
    C("cli-negative-subset", "cli", ["train", "--data", "synthetic", "--subset", "-5"], ["subset"]),
    C("cli-zero-test-subset", "cli", ["train", "--data", "synthetic", "--test-subset", "0"], ["test_subset"]),
    C("cli-bad-seeds", "cli", ["compare", "--data", "synthetic", "--seeds", "0,x"], ["--seeds"]),
    C("cli-bad-lr-grid", "cli", ["compare", "--data", "synthetic", "--seeds", "0", "--lr-grid", "-1"], ["--lr-grid"]),
    C(
        "cli-unknown-compare-method",
        "cli",
        ["compare", "--data", "synthetic", "--methods", "sgd,z-alt"],
        ["unknown method"],
    ),
    C("cli-resume-missing", "cli", ["train", "--resume", "no-such-run"], ["not a run folder"]),
    C(
        "cli-resume-with-set",
        "cli",
        ["train", "--resume", "r", "--set", "train.lr=1"],
        ["--resume"],
        files={"r/config.yaml": b"data:\n  name: synthetic\n"},
    ),
    C("cli-strict-alone", "cli", ["train", "--strict", "--data", "synthetic"], ["--strict"]),
    C("cli-data-dir-hostile", "cli", ["train", "--data", "cifar10", "--data-dir", "../../../../etc"], ["cifar10"]),
    C("cli-set-deep", "cli", ["train", "--set", "model.kwargs=" + "[" * 5000], ["deeper than 32"]),
    C(
        "cli-set-laughs",
        "cli",
        [
            "train",
            "--set",
            "model.kwargs="
            + (Y / "laughs6.yaml")
            .read_text()
            .split("kwargs:\n")[1]
            .replace("\n    ", ", ")
            .join("{}")
            .replace("{    ", "{"),
        ],
        ["expands"],
    ),
    C("cli-set-duplicate-key", "cli", ["train", "--set", "model.kwargs={width: 4, width: 8}"], ["'width' twice"]),
    C("cli-set-huge-int", "cli", ["train", "--set", "train.epochs=" + "9" * 5000], ["not valid YAML"]),
    C("cli-set-too-long", "cli", ["train", "--set", "out=" + "x" * (1 << 20 | 1)], ["longer than"]),
    C(
        "cli-method-yaml-error",
        "cli",
        ["compare", *TINY, "--methods", "sgd[beta=: x]"],
        ["not valid YAML", "sgd[beta=: x]"],
    ),
    C(
        "cli-method-tau-list",
        "cli",
        ["compare", *TINY, "--methods", "i-alt[tau=[0.1,0.2]]"],
        ["support.tau has 2 values"],
    ),
    C(
        "cli-method-unknown-key",
        "cli",
        ["compare", *TINY, "--methods", "sgd[bogus=1]"],
        ["unknown config key", "bogus"],
    ),
    C("cli-method-deep", "cli", ["compare", *TINY, "--methods", "sgd[beta=" + "[" * 100 + "]" * 100 + "]"], ["deeper"]),
    C("cli-method-nan", "cli", ["compare", *TINY, "--methods", "sgd[beta=.nan]"], ["support.beta", "finite"]),
    C(
        "cli-resume-overwrite",
        "cli",
        ["train", "--resume", "run", "--overwrite"],
        ["--overwrite", "--resume"],
        files=_finished_run,
    ),
    C("cli-study-seed-overflow", "numbers", ["compare", *TINY, "--seeds", "0,99999999999999999999999"], ["--seeds"]),
    C(
        "cli-study-tune-epochs",
        "numbers",
        ["compare", *TINY, "--seeds", "0", "--lr-grid", "0.1", "--tune-epochs", "0"],
        ["--tune-epochs"],
    ),
    C(
        "cli-resume-a-file",
        "cli",
        ["train", "--resume", "f.txt"],
        ["--resume f.txt", "not a folder"],
        files={"f.txt": b"m"},
    ),
    # numbers out of range (§2): refused by the config's ranges, the theory limits, the model's dry build
    C("num-seed-huge", "numbers", ["train", *TINY, "--seed", "99999999999999999999999"], ["train.seed"]),
    C("num-seed-negative", "numbers", ["train", *TINY, "--seed", "-1"], ["train.seed"]),
    C("num-threads-negative", "numbers", ["train", *TINY, "--set", "train.threads=-1"], ["train.threads"]),
    C("num-threads-huge", "numbers", ["train", *TINY, "--set", "train.threads=100000"], ["train.threads"]),
    C("num-device-banana", "numbers", ["train", *TINY, "--set", "train.device=banana"], ["train.device", "banana"]),
    C("num-device-index", "numbers", ["train", *TINY, "--set", "train.device=cuda:x"], ["train.device"]),
    C("num-milestones-words", "numbers", ["train", *TINY, "--set", "train.milestones=[a,b]"], ["train.milestones"]),
    C("num-milestones-negative", "numbers", ["train", *TINY, "--set", "train.milestones=[-1]"], ["train.milestones"]),
    C(
        "num-width-negative",
        "numbers",
        ["train", *TINY, "--set", "model.kwargs={width: -1}"],
        ["model.kwargs", "width"],
    ),
    C("num-hidden-zero", "numbers", ["train", *TINY, "--set", "model.kwargs={hidden: 0}"], ["size 0"]),
    C("num-width-huge", "numbers", ["train", *TINY, "--set", "model.kwargs={width: 10000000}"], ["memory"]),
    C("num-kwarg-unknown", "numbers", ["train", *TINY, "--set", "model.kwargs={depth: 3}"], ["model.kwargs", "depth"]),
    C("num-kwarg-not-a-name", "numbers", ["train", *TINY, "--set", "model.kwargs={1: 2}"], ["argument name"]),
    C("num-width-string", "numbers", ["train", *TINY, "--set", "model.kwargs={width: wide}"], ["model.kwargs"]),
    C("num-image-size-zero", "numbers", ["train", *TINY, "--set", "data.image_size=0"], ["data.image_size"]),
    C("num-image-size-huge", "numbers", ["train", *TINY, "--set", "data.image_size=100000"], ["data.image_size"]),
    C("num-pad-huge", "numbers", ["train", *TINY, "--set", "data.pad=3000"], ["data.pad"]),
    C("num-pad-negative", "numbers", ["train", *TINY, "--set", "data.pad=-1"], ["data.pad"]),
    C("num-batch-64bit", "numbers", ["train", *TINY, "--set", "train.batch_size=" + "9" * 30], ["64 bits"]),
    C("num-epochs-huge", "numbers", ["train", *TINY, "--epochs", str(2**62)], ["train.epochs"]),
    C("num-workers-negative", "numbers", ["train", *TINY, "--set", "data.workers=-1"], ["data.workers"]),
    C("num-subset-float-overflow", "numbers", ["train", *TINY, "--set", "data.subset=1e400"], ["data.subset"]),
    C(
        "num-evals-per-epoch",
        "numbers",
        ["train", *TINY, "--set", "train.evals_per_epoch=1000000000"],
        ["evals_per_epoch"],
    ),
    # the weight phase's optimizer and its sections (train.optimizer, kfac.*, head.*)
    C("opt-unknown", "numbers", ["train", *TINY, "--set", "train.optimizer=lbfgs"], ["train.optimizer", "kfac"]),
    C("opt-kfac-damping-negative", "numbers", ["train", *TINY, "--set", "kfac.damping=-0.01"], ["kfac.damping"]),
    C("opt-kfac-damping-zero", "numbers", ["train", *TINY, "--set", "kfac.damping=0"], ["kfac.damping"]),
    C("opt-kfac-update-zero", "numbers", ["train", *TINY, "--set", "kfac.update_every=0"], ["kfac.update_every"]),
    C("opt-kfac-factor-zero", "numbers", ["train", *TINY, "--set", "kfac.factor_every=0"], ["kfac.factor_every"]),
    C("opt-kfac-ema-zero", "numbers", ["train", *TINY, "--set", "kfac.ema=0"], ["kfac.ema"]),
    C("opt-kfac-line-search", "numbers", ["train", *TINY, "--set", "kfac.line_search=wolfe"], ["kfac.line_search"]),
    C("opt-smoothing-one", "numbers", ["train", *TINY, "--set", "train.label_smoothing=1"], ["label_smoothing"]),
    C("opt-smoothing-negative", "numbers", ["train", *TINY, "--set", "train.label_smoothing=-0.1"], ["label_smooth"]),
    C("opt-warmup-negative", "numbers", ["train", *TINY, "--set", "train.lr_warmup=-1"], ["train.lr_warmup"]),
    C("opt-warmup-whole-run", "numbers", ["train", *TINY, "--set", "train.lr_warmup=1"], ["lr_warmup", "shorter"]),
    C(
        "opt-nesterov-no-momentum",
        "numbers",
        ["train", *TINY, "--set", "train.nesterov=true", "--set", "train.momentum=0"],
        ["train.nesterov", "train.momentum"],
    ),
    C(
        "opt-nesterov-adamw",
        "numbers",
        ["train", *TINY, "--set", "train.nesterov=true", "--set", "train.optimizer=adamw"],
        ["train.nesterov", "adamw"],
    ),
    C("opt-head-unknown", "numbers", ["train", *TINY, "--set", "head.solve=always"], ["head.solve", "round"]),
    C("opt-head-yes", "numbers", ["train", *TINY, "--set", "head.solve=yes"], ["head.solve", "quote", "round"]),
    C("opt-head-tol-zero", "numbers", ["train", *TINY, "--set", "head.tol=0"], ["head.tol"]),
    C("yaml-head-solve-yes", "config", ["train", "--config", Y / "head_solve_yes.yaml"], ["head.solve", "quote"]),
    C("yaml-out-no", "config", ["train", "--config", Y / "out_no.yaml"], ["config key out", "quote"]),
    C("num-rip-n-huge", "numbers", ["theory", "check-rip", "--data", "synthetic", "--n", "100000"], ["--n"]),
    C(
        "num-rip-n-above-set",
        "numbers",
        ["theory", "check-rip", "--data", "synthetic", "--n", "4000"],
        ["training examples"],
    ),
    C("num-planted-widths", "numbers", ["theory", "planted", "--widths", "100000000"], ["--widths"]),
    C("num-planted-unknowns", "numbers", ["theory", "planted", "--h", "1000", "--d", "1000"], ["unknowns"]),
    C("num-planted-seed", "numbers", ["theory", "planted", "--seed", "99999999999999999999999"], ["--seed"]),
    C("num-planted-tau-nan", "numbers", ["theory", "planted", "--tau", "nan"], ["--tau", "finite"]),
    C("num-solvers-n", "numbers", ["theory", "solvers", "--n", "1000000000"], ["--n"]),
    C("num-three-layer-starts", "numbers", ["theory", "three-layer", "--starts", "1000000000"], ["--starts"]),
    C("num-lift-check-seed", "numbers", ["theory", "lift-check", "--seed", "-1"], ["--seed"]),
    # non-finite numbers (§4): refused at validation, every float key
    C("nan-beta", "nonfinite", ["train", *TINY, "--set", "support.beta=.nan"], ["support.beta", "finite"]),
    C("inf-tau", "nonfinite", ["train", *TINY, "--set", "support.tau=.inf"], ["support.tau", "finite"]),
    C("nan-lr", "nonfinite", ["train", *TINY, "--set", "train.lr=.nan"], ["train.lr", "finite"]),
    C("inf-lr", "nonfinite", ["train", *TINY, "--set", "train.lr=.inf"], ["train.lr", "finite"]),
    C("overflow-lr", "nonfinite", ["train", *TINY, "--set", "train.lr=1e999"], ["train.lr", "finite"]),
    C("nan-word-lr", "nonfinite", ["train", *TINY, "--set", "train.lr=nan"], ["train.lr", "finite"]),
    C("nan-momentum", "nonfinite", ["train", *TINY, "--set", "train.momentum=.nan"], ["train.momentum"]),
    C("inf-weight-decay", "nonfinite", ["train", *TINY, "--set", "train.weight_decay=-.inf"], ["train.weight_decay"]),
    C("nan-gamma", "nonfinite", ["train", *TINY, "--set", "train.gamma=.nan"], ["train.gamma"]),
    C("inf-consistency", "nonfinite", ["train", *TINY, "--set", "support.consistency=.inf"], ["support.consistency"]),
    C("nan-dsd-sparsity", "nonfinite", ["dsd", *TINY, "--set", "dsd.sparsity=.nan"], ["dsd.sparsity"]),
    C("nan-plateau-tol", "nonfinite", ["train", *TINY, "--set", "support.plateau_tol=.nan"], ["support.plateau_tol"]),
    # run folders (§1): owned by one run; nothing of an earlier run is touched
    C(
        "run-train-over-finished",
        "runfolder",
        ["train", *TINY, "--out", "run"],
        ["already holds", "--resume run", "--overwrite"],
        files=_finished_run,
    ),
    C(
        "run-diverging-over-finished",
        "runfolder",
        ["train", *TINY, "--set", "train.lr=1e6", "--out", "run"],
        ["already holds"],
        files=_finished_run,
    ),
    C("run-dsd-over-train-run", "runfolder", ["dsd", *TINY, "--out", "run"], ["already holds"], files=_finished_run),
    C(
        "run-compare-over-train-run",
        "runfolder",
        ["compare", *TINY, "--methods", "sgd", "--out", "run"],
        ["already holds", "--overwrite"],
        files=_finished_run,
    ),
    C(
        "run-study-over-train-run",
        "runfolder",
        ["compare", *TINY, "--methods", "sgd", "--seeds", "0", "--out", "run"],
        ["already holds"],
        files=_finished_run,
    ),
    C(
        "run-theory-over-train-run",
        "runfolder",
        ["theory", "three-layer", "--starts", "1", "--out", "run"],
        ["already holds"],
        files=_finished_run,
    ),
    C(
        "run-user-files",
        "runfolder",
        ["train", *TINY, "--out", "mine"],
        ["already holds", "notes.txt"],
        files={"mine/notes.txt": b"mine"},
    ),
    C(
        "run-stale-temporary",
        "runfolder",
        ["train", *TINY, "--out", "run"],
        ["already holds"],
        files=_finished_with_tmp,
    ),
    C(
        "run-locked",
        "runfolder",
        ["train", *TINY, "--out", "busy"],
        ["in use by another supportnet process"],
        hold="busy",
    ),
    C("run-locked-resume", "runfolder", ["train", "--resume", "run"], ["in use"], files=_finished_run, hold="run"),
    C(
        "run-dsd-bad-value-existing",
        "runfolder",
        ["dsd", *TINY, "--set", "dsd.sparsity=1.5", "--out", "d"],
        ["dsd.sparsity"],
        files=_dsd_folder,
    ),
    C(
        "run-dsd-over-dsd",
        "runfolder",
        ["dsd", *TINY, "--out", "d"],
        ["already holds", "--resume d"],
        files=_dsd_folder,
    ),
    C(
        "run-study-other-config",
        "runfolder",
        ["compare", *TINY, "--methods", "sgd", "--seeds", "0", "--out", "st"],
        ["seed0/sgd", "already holds"],
        files=_study_other_config,
    ),
    C(
        "run-planted-over-planted",
        "runfolder",
        ["theory", "planted", "--n", "20", "--starts", "1", "--out", "p"],
        ["already holds"],
        files={"p/planted.json": b"{}"},
    ),
    C(
        "run-dsd-resume-not-dsd",
        "runfolder",
        ["dsd", "--resume", "run"],
        ["not a run folder", "dsd-config.yaml"],
        files=_finished_run,
    ),
    # a finished run is read-only (issue 25): said in one line (exit 0), every file keeps its bytes
    C(
        "run-resume-finished",
        "runfolder",
        ["train", "--resume", "run"],
        ["run has already finished", "nothing to resume", "left as they are"],
        files=_finished_run,
        code=0,
    ),
    C(
        "run-resume-finished-quiet",
        "runfolder",
        ["train", "--resume", "run", "--quiet"],
        ["already finished"],
        files=_finished_run,
        code=0,
    ),
    C(
        "run-resume-finished-with-set",
        "runfolder",
        ["train", "--resume", "run", "--set", "train.epochs=2"],
        ["--resume", "drop --config, --set"],
        files=_finished_run,
    ),
    C(
        "run-resume-finished-with-config",
        "runfolder",
        ["train", "--resume", "run", "--config", "other.yaml"],
        ["--resume", "drop --config"],
        files={**_finished(), "other.yaml": b"train:\n  epochs: 2\n"},
    ),
    C(
        "run-resume-finished-edited-config",
        "runfolder",
        ["train", "--resume", "run"],
        ["differs", "train.epochs", "a finished run is not changed", "new --out"],
        files=_finished_edited,
    ),
    C(
        "run-dsd-resume-finished",
        "runfolder",
        ["dsd", "--resume", "d"],
        ["d holds a finished DSD run", "nothing to resume", "left as they are"],
        files=_finished_dsd_run,
        code=0,
    ),
    C(
        "run-dsd-resume-finished-with-set",
        "runfolder",
        ["dsd", "--resume", "d", "--set", "dsd.sparsity=0.5"],
        ["--resume", "drop --config, --set"],
        files=_finished_dsd_run,
    ),
    C(
        "run-dsd-resume-finished-edited-config",
        "runfolder",
        ["dsd", "--resume", "d"],
        ["differs", "dsd.sparsity", "a finished run is not changed"],
        files=_finished_dsd_edited,
    ),
    # output paths that cannot be made (§2): one check for every writing command
    C("out-proc", "outpath", ["train", *TINY, "--out", "/proc/x"], ["cannot be made"]),
    C("out-existing-file", "outpath", ["train", *TINY, "--out", "f.txt"], ["not a folder"], files={"f.txt": b"mine"}),
    C(
        "out-under-file",
        "outpath",
        ["train", *TINY, "--out", "f.txt/run"],
        ["f.txt is a file"],
        files={"f.txt": b"mine"},
    ),
    C("out-not-utf8", "outpath", ["train", *TINY, "--out", "run-\udcff"], ["UTF-8"]),
    C("out-nul", "outpath", ["train", *TINY, "--set", 'out="a\\0b"'], ["NUL"]),
    C("out-empty", "outpath", ["train", *TINY, "--set", 'out=""'], ["out is empty"]),
    C(
        "out-broken-link",
        "outpath",
        ["train", *TINY, "--out", "l/run"],
        ["broken symlink"],
        files=lambda d: (d / "l").symlink_to("nowhere"),
    ),
    C("out-dsd-file", "outpath", ["dsd", *TINY, "--out", "f.txt"], ["not a folder"], files={"f.txt": b"mine"}),
    C("out-dsd-proc", "outpath", ["dsd", *TINY, "--out", "/proc/x"], ["cannot be made"]),
    C(
        "out-compare-under-file",
        "outpath",
        ["compare", *TINY, "--methods", "sgd", "--out", "f.txt/x"],
        ["is a file"],
        files={"f.txt": b"m"},
    ),
    C("out-compare-proc", "outpath", ["compare", *TINY, "--methods", "sgd", "--out", "/proc/x"], ["cannot be made"]),
    C(
        "out-study-file",
        "outpath",
        ["compare", *TINY, "--methods", "sgd", "--seeds", "0", "--out", "f.txt"],
        ["not a folder"],
        files={"f.txt": b"m"},
    ),
    C(
        "out-planted-file",
        "outpath",
        ["theory", "planted", "--n", "20", "--starts", "1", "--out", "f.txt"],
        ["not a folder"],
        files={"f.txt": b"m"},
    ),
    C(
        "out-planted-proc",
        "outpath",
        [
            "theory",
            "planted",
            "--d",
            "4",
            "--h",
            "2",
            "--o",
            "1",
            "--n",
            "20",
            "--starts",
            "1",
            "--max-steps",
            "5",
            "--out",
            "/proc/x",
        ],
        ["cannot be made"],
    ),
    C(
        "out-rip-under-file",
        "outpath",
        ["theory", "check-rip", "--data", "synthetic", "--out", "f.txt/x"],
        ["is a file"],
        files={"f.txt": b"m"},
    ),
    C(
        "out-fetch-root-file",
        "outpath",
        ["data", "fetch", "fashion-mnist", "--root", "f.txt"],
        ["--root", "not a folder"],
        files={"f.txt": b"m"},
    ),
    C("out-fetch-root-proc", "outpath", ["data", "fetch", "fashion-mnist", "--root", "/proc/x"], ["/proc/x"]),
    C("out-data-dir-empty", "outpath", ["train", *TINY, "--set", 'data.data_dir=""'], ["data.data_dir is empty"]),
    # input files (§5): "not a file" where it is not one
    C("verify-dir", "inputfile", ["verify", "."], ["not a file", "folder"]),
    C("verify-dev-null", "inputfile", ["verify", "/dev/null"], ["not a file"]),
    C("verify-fifo", "inputfile", ["verify", "p.pt"], ["not a file"], files=_fifo("p.pt")),
    C("verify-symlink-loop", "inputfile", ["verify", "l.pt"], ["symlink loop"], files=_loop("l.pt")),
    C("verify-missing", "inputfile", ["verify", "nope.pt"], ["does not exist"]),
    C(
        "rip-checkpoint-dir",
        "inputfile",
        ["theory", "check-rip", "--data", "synthetic", "--checkpoint", "."],
        ["not a file"],
    ),
    # data files
    C(
        "data-idx-bad-magic",
        "data",
        ["train", "--data", "fashion-mnist", "--data-dir", "fm", "--epochs", "1"],
        ["magic"],
        files=_idx(4, 4, magic=1234),
    ),
    C(
        "data-idx-truncated",
        "data",
        ["train", "--data", "fashion-mnist", "--data-dir", "fm", "--epochs", "1"],
        ["fm"],
        files=_idx(4, 4, truncate=True),
    ),
    C(
        "data-idx-count-mismatch",
        "data",
        ["train", "--data", "fashion-mnist", "--data-dir", "fm", "--epochs", "1"],
        ["label"],
        files=_idx(4, 3),
    ),
    C(
        "data-folder-no-val",
        "data",
        ["train", "--data", "imagefolder", "--data-dir", "img", "--epochs", "1"],
        ["val/"],
        files=_folder("no-val"),
    ),
    C(
        "data-folder-corrupt-image",
        "data",
        ["train", "--data", "imagefolder", "--data-dir", "img", "--epochs", "1"],
        ["not an image"],
        files=_folder("corrupt"),
    ),
    C(
        "data-model-mismatch",
        "data",
        ["train", "--data", "synthetic", "--model", "vgg16", "--out", "o"],
        ["cannot take", "data.pad"],
        fresh=True,
    ),
    C(
        "data-idx-zero-examples",
        "data",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "fm"],
        ["no examples"],
        files=lambda: _idx_set(train_images_idx3=_raw_idx((0, 28, 28)), train_labels_idx1=_raw_idx((0,))),
    ),
    C(
        "data-idx-float-labels",
        "data",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "fm"],
        ["labels are floats"],
        files=lambda: _idx_set(train_labels_idx1=_raw_idx((4,), 0x0D, struct.pack(">4f", 0.5, 1.5, 2.5, 3.5))),
    ),
    C(
        "data-idx-label-range",
        "data",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "fm"],
        ["labels fall outside"],
        files=lambda: _idx_set(train_labels_idx1=_raw_idx((4,), body=bytes([0, 1, 2, 200]))),
    ),
    C(
        "data-idx-test-size",
        "data",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "fm"],
        ["test images are 1x32x32", "1x28x28"],
        files=lambda: _idx_set(t10k_images_idx3=_raw_idx((2, 32, 32))),
    ),
    C(
        "data-idx-3-of-4",
        "data",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "fm"],
        ["3 of the 4", "t10k-labels"],
        files=lambda: _idx_set(t10k_labels_idx1=None),
    ),
    C(
        "data-idx-symlink-loop",
        "data",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "fm"],
        ["3 of the 4", "symlink loop"],
        files=_idx_symlink_loop,
    ),
    C(
        "data-check-3-of-4",
        "data",
        ["data", "check", "fashion-mnist", "--data-dir", "fm"],
        ["fashion-mnist"],
        files=lambda: _idx_set(t10k_labels_idx1=None),
    ),
    C(
        "data-dir-is-file",
        "data",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "f.txt"],
        ["not a folder"],
        files={"f.txt": b"m"},
    ),
    C(
        "data-dir-loop",
        "data",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "l"],
        ["symlink loop"],
        files=_loop("l"),
    ),
    C(
        "data-cifar-label-range",
        "data",
        ["train", *TINY, "--data", "cifar10", "--data-dir", "c"],
        ["labels fall outside 0..9"],
        files=lambda: _cifar((0, 1, 2, 10)),
    ),
    C(
        "data-cifar-label-negative",
        "data",
        ["train", *TINY, "--data", "cifar10", "--data-dir", "c"],
        ["labels fall outside"],
        files=lambda: _cifar((0, -1, 2, 3)),
    ),
    C(
        "data-cifar-label-strings",
        "data",
        ["train", *TINY, "--data", "cifar10", "--data-dir", "c"],
        ["not integers"],
        files=lambda: _cifar(("a", "b", "c", "d")),
    ),
    C(
        "data-cifar-label-floats",
        "data",
        ["train", *TINY, "--data", "cifar10", "--data-dir", "c"],
        ["labels are floats"],
        files=lambda: _cifar((0.5, 1.0, 2.0, 3.0)),
    ),
    C(
        "data-cifar-data-floats",
        "data",
        ["train", *TINY, "--data", "cifar10", "--data-dir", "c"],
        ["uint8"],
        files=lambda: _cifar(data=np.zeros((4, 3072))),
    ),
    C(
        "data-cifar-member-size",
        "data",
        ["train", *TINY, "--data", "cifar10", "--data-dir", "c"],
        ["truncated or corrupt"],
        files=_cifar_tar_member_too_large,
    ),
    C(
        "data-folder-empty-class",
        "data",
        ["train", *TINY, "--data", "imagefolder", "--data-dir", "img"],
        ["0-empty", "holds no images"],
        files=_empty_class,
    ),
    C(
        "data-folder-test-size",
        "data",
        ["train", *TINY, "--data", "imagefolder", "--data-dir", "img"],
        ["test images are 3x16x16"],
        files=lambda: _images(**{"img__val__a__0.png": _png_of(16), "img__val__b__0.png": _png_of(16)}),
    ),
    C(
        "data-folder-image-size-zero",
        "data",
        ["train", *TINY, "--data", "imagefolder", "--data-dir", "img", "--set", "data.image_size=0"],
        ["data.image_size"],
        files=lambda: _images(),
    ),
    # denial of service from tiny data files
    C(
        "dos-png-30000",
        "dos",
        ["train", *TINY, "--data", "imagefolder", "--data-dir", "img"],
        ["too large"],
        files=lambda: _images(**{"img__train__a__0.png": _png(30000, 30000)}),
        dos=True,
    ),
    C(
        "dos-idx-gzip-bomb",
        "dos",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "fm"],
        ["gzip file can hold"],
        files=_idx_bomb,
        dos=True,
    ),
    C(
        "dos-idx-dims-overflow",
        "dos",
        ["train", *TINY, "--data", "fashion-mnist", "--data-dir", "fm"],
        ["declares"],
        files=lambda: _idx_set(train_images_idx3=_raw_idx((2**32 - 1,) * 3, body=b"")),
        dos=True,
    ),
    # checkpoints
    C("ckpt-truncated", "checkpoint", ["verify", "run/checkpoint.pt"], ["truncated"], files=_checkpoint("truncated")),
    C("ckpt-bitflip", "checkpoint", ["verify", "run/checkpoint.pt"], ["checkpoint"], files=_checkpoint("bitflip")),
    C("ckpt-version", "checkpoint", ["verify", "run/checkpoint.pt"], ["version 99"], files=_checkpoint("version")),
    C(
        "ckpt-foreign",
        "checkpoint",
        ["verify", "run/checkpoint.pt"],
        ["not a supportnet checkpoint"],
        files=_checkpoint("foreign"),
    ),
    C("ckpt-resume-corrupt", "checkpoint", ["train", "--resume", "run"], ["checkpoint"], files=_checkpoint("bitflip")),
    C(
        "ckpt-export-not-dsd",
        "checkpoint",
        ["export", "--compact", "run/checkpoint.pt", "-o", "small.pt"],
        ["not a DSD sparse checkpoint"],
        files=_checkpoint("intact"),
    ),
    # mask stores
    C("store-truncated", "maskstore", ["verify", "m.smask"], ["truncated"], files=_store("truncated")),
    C("store-bitflip", "maskstore", ["verify", "m.smask"], ["checksum"], files=_store("bitflip")),
    C("store-version", "maskstore", ["verify", "m.smask"], ["version 7"], files=_store("version")),
    C("store-negative-size", "maskstore", ["verify", "m.smask"], ["header"], files=_store("negative")),
    C("store-foreign", "maskstore", ["verify", "m.smask"], ["not a supportnet mask store"], files=_store("foreign")),
    C(
        "store-negative-shape",
        "maskstore",
        ["verify", "m.smask"],
        ["damaged header"],
        files=_stores(n=1, shapes=[[-8], [16]]),
    ),
    C(
        "store-zero-dim",
        "maskstore",
        ["verify", "m.smask"],
        ["damaged header"],
        files=_stores(n=1, shapes=[[8, 0]], bits=0),
    ),
    C(
        "store-bool-n",
        "maskstore",
        ["verify", "m.smask"],
        ["damaged header"],
        files={"m.smask": _store_header({**_META, "n": True, "shapes": [[8]]}, b"\0")},
    ),
    C("store-float-n", "maskstore", ["verify", "m.smask"], ["damaged header"], files=_stores(n=1.0, shapes=[[8]])),
    C("store-no-layers", "maskstore", ["verify", "m.smask"], ["damaged header"], files=_stores(n=1, shapes=[])),
    C(
        "store-deep-json",
        "maskstore",
        ["verify", "m.smask"],
        ["damaged header"],
        files={"m.smask": _store_header("[" * 100_000 + "]" * 100_000)},
    ),
    C(
        "store-short-checksum",
        "maskstore",
        ["verify", "m.smask"],
        ["damaged header"],
        files={"m.smask": _store_header({**_META, "n": 1, "shapes": [[8]], "checksum": "0"}, b"\0")},
    ),
    # denial of service from tiny mask stores: the header against the file's size, before any pass
    C(
        "dos-store-1e18-rows",
        "dos",
        ["verify", "m.smask"],
        ["truncated or padded"],
        files=_stores(n=10**18, shapes=[[8]]),
        dos=True,
    ),
    C(
        "dos-store-1e18-rows-no-bits",
        "dos",
        ["verify", "m.smask"],
        ["damaged header"],
        files=_stores(n=10**18, shapes=[[0]], bits=0, row_bytes=0),
        dos=True,
    ),
]


def test_corpus_is_large_and_covers_every_class():
    cats: dict[str, int] = {}
    for c in CASES:
        cats[c.category] = cats.get(c.category, 0) + 1
    assert len(CASES) >= 120, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
    want = {"config", "cli", "data", "checkpoint", "maskstore", "dos", "numbers", "nonfinite"}
    assert want | {"runfolder", "outpath", "inputfile"} == set(cats), cats
    assert sum(c.dos for c in CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(tmp_path, capfd, monkeypatch, case):
    run_bad_case(case, tmp_path, capfd, monkeypatch, statics=BAD)
