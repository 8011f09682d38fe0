"""The bad-input corpus: every case exits 2 with one line naming the problem and the fix,
prints no traceback, and modifies or deletes none of the user's files.

Static inputs live in tests/bad_inputs/; the others (data files, checkpoints, mask stores)
are written by the builders below into the case's own folder.
"""

import gzip
import hashlib
import io
import struct
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli

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

    from supportnet.io import save_checkpoint

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


def _run_folder_with_store(kind: str) -> dict[str, bytes]:
    return _store(kind)


# (id, category, files, argv, words the error must contain)
CASES = [
    # config files
    ("yaml-malformed", "config", {}, ["train", "--config", BAD / "malformed.yaml"], ["not valid YAML"]),
    ("yaml-list", "config", {}, ["train", "--config", BAD / "list.yaml"], ["mapping"]),
    ("yaml-unknown-key", "config", {}, ["train", "--config", BAD / "unknown_key.yaml"], ["unknown config key"]),
    ("yaml-wrong-type", "config", {}, ["train", "--config", BAD / "wrong_type.yaml"], ["train.epochs", "int"]),
    ("yaml-negative-epochs", "config", {}, ["train", "--config", BAD / "negative_epochs.yaml"], ["train.epochs"]),
    ("yaml-unknown-method", "config", {}, ["train", "--config", BAD / "unknown_method.yaml"], ["support.method"]),
    ("yaml-tau-length", "config", {}, ["train", "--config", BAD / "tau_length.yaml", "--out", "o"], ["support.tau"]),
    ("yaml-hostile-tag", "config", {}, ["train", "--config", BAD / "hostile_tag.yaml"], ["not valid YAML"]),
    ("yaml-section-scalar", "config", {}, ["train", "--config", BAD / "section_not_mapping.yaml"], ["mapping"]),
    ("yaml-binary", "config", {}, ["train", "--config", BAD / "binary.yaml"], ["config file"]),
    ("yaml-dsd-sparsity", "config", {}, ["dsd", "--config", BAD / "dsd_sparsity.yaml"], ["dsd"]),
    ("yaml-negative-subset", "config", {}, ["train", "--config", BAD / "negative_subset.yaml"], ["subset"]),
    (
        "yaml-bad-model-kwarg",
        "config",
        {},
        ["train", "--config", BAD / "bad_model_kwarg.yaml", "--out", "o"],
        ["model.kwargs"],
    ),
    ("config-missing", "config", {}, ["train", "--config", "nope.yaml"], ["does not exist"]),
    # command-line arguments
    ("cli-unknown-command", "cli", {}, ["fly"], ["invalid choice"]),
    ("cli-epochs-not-int", "cli", {}, ["train", "--epochs", "abc"], ["--epochs"]),
    ("cli-set-no-equals", "cli", {}, ["train", "--set", "train.epochs"], ["key=value"]),
    ("cli-set-unknown-section", "cli", {}, ["train", "--set", "trian.epochs=3"], ["unknown config key"]),
    ("cli-unknown-model", "cli", {}, ["train", "--model", "resnet-9000", "--data", "synthetic"], ["unknown model"]),
    ("cli-unknown-data", "cli", {}, ["train", "--data", "imagenet-22k"], ["imagenet-22k"]),
    ("cli-negative-subset", "cli", {}, ["train", "--data", "synthetic", "--subset", "-5"], ["subset"]),
    ("cli-zero-test-subset", "cli", {}, ["train", "--data", "synthetic", "--test-subset", "0"], ["test_subset"]),
    ("cli-bad-seeds", "cli", {}, ["compare", "--data", "synthetic", "--seeds", "0,x"], ["--seeds"]),
    (
        "cli-bad-lr-grid",
        "cli",
        {},
        ["compare", "--data", "synthetic", "--seeds", "0", "--lr-grid", "-1"],
        ["--lr-grid"],
    ),
    (
        "cli-unknown-compare-method",
        "cli",
        {},
        ["compare", "--data", "synthetic", "--methods", "sgd,z-alt"],
        ["unknown method"],
    ),
    ("cli-resume-missing", "cli", {}, ["train", "--resume", "no-such-run"], ["not a run folder"]),
    ("cli-resume-with-set", "cli", {}, ["train", "--resume", "r", "--set", "train.lr=1"], ["--resume"]),
    ("cli-strict-alone", "cli", {}, ["train", "--strict", "--data", "synthetic"], ["--strict"]),
    ("cli-data-dir-hostile", "cli", {}, ["train", "--data", "cifar10", "--data-dir", "../../../../etc"], ["cifar10"]),
    # data files
    (
        "data-idx-bad-magic",
        "data",
        _idx(4, 4, magic=1234),
        ["train", "--data", "fashion-mnist", "--data-dir", "fm", "--epochs", "1"],
        ["magic"],
    ),
    (
        "data-idx-truncated",
        "data",
        _idx(4, 4, truncate=True),
        ["train", "--data", "fashion-mnist", "--data-dir", "fm", "--epochs", "1"],
        ["fm"],
    ),
    (
        "data-idx-count-mismatch",
        "data",
        _idx(4, 3),
        ["train", "--data", "fashion-mnist", "--data-dir", "fm", "--epochs", "1"],
        ["label"],
    ),
    (
        "data-folder-no-val",
        "data",
        _folder("no-val"),
        ["train", "--data", "imagefolder", "--data-dir", "img", "--epochs", "1"],
        ["val/"],
    ),
    (
        "data-folder-corrupt-image",
        "data",
        _folder("corrupt"),
        ["train", "--data", "imagefolder", "--data-dir", "img", "--epochs", "1"],
        ["not an image"],
    ),
    (
        "data-model-mismatch",
        "data",
        {},
        ["train", "--data", "synthetic", "--model", "vgg16", "--out", "o"],
        ["cannot take", "data.pad"],
    ),
    # checkpoints
    ("ckpt-truncated", "checkpoint", _checkpoint("truncated"), ["verify", "run/checkpoint.pt"], ["truncated"]),
    ("ckpt-bitflip", "checkpoint", _checkpoint("bitflip"), ["verify", "run/checkpoint.pt"], ["checkpoint"]),
    ("ckpt-version", "checkpoint", _checkpoint("version"), ["verify", "run/checkpoint.pt"], ["version 99"]),
    (
        "ckpt-foreign",
        "checkpoint",
        _checkpoint("foreign"),
        ["verify", "run/checkpoint.pt"],
        ["not a supportnet checkpoint"],
    ),
    ("ckpt-resume-corrupt", "checkpoint", _checkpoint("bitflip"), ["train", "--resume", "run"], ["checkpoint"]),
    (
        "ckpt-export-not-dsd",
        "checkpoint",
        _checkpoint("intact"),
        ["export", "--compact", "run/checkpoint.pt", "-o", "small.pt"],
        ["not a DSD sparse checkpoint"],
    ),
    # mask stores
    ("store-truncated", "maskstore", _store("truncated"), ["verify", "m.smask"], ["truncated"]),
    ("store-bitflip", "maskstore", _store("bitflip"), ["verify", "m.smask"], ["checksum"]),
    ("store-version", "maskstore", _store("version"), ["verify", "m.smask"], ["version 7"]),
    ("store-negative-size", "maskstore", _store("negative"), ["verify", "m.smask"], ["header"]),
    ("store-foreign", "maskstore", _store("foreign"), ["verify", "m.smask"], ["not a supportnet mask store"]),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_corpus_is_large_enough():
    cats = {}
    for c in CASES:
        cats[c[1]] = cats.get(c[1], 0) + 1
    assert len(CASES) >= 30 and set(cats) == {"config", "cli", "data", "checkpoint", "maskstore"}, cats


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, case):
    name, _, files, argv, words = case
    for rel, data in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    if name == "cli-resume-with-set":
        (tmp_path / "r").mkdir()
        (tmp_path / "r" / "config.yaml").write_text("data:\n  name: synthetic\n")
    before = _snapshot(tmp_path)
    statics = _snapshot(BAD)
    proc = run_cli(*argv, cwd=tmp_path, env={"SUPPORTNET_DATA": str(tmp_path / "nowhere"), "HOME": str(tmp_path)})
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-1500:])
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("supportnet: error:"), err
    assert ";" in err or "see '" in err, f"no fix named: {err}"  # 'problem; fix'
    for w in words:
        assert w.lower() in err.lower(), (w, err)
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a user file was modified or deleted"
    assert not (tmp_path / "PWNED").exists()
    assert _snapshot(BAD) == statics
