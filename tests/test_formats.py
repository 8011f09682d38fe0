import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from supportnet.data import check_dataset, load_data
from supportnet.data.augment import crop_flip, view_randoms
from supportnet.data.download import download, safe_extract
from supportnet.data.preprocess import gcn, gcn_zca
from supportnet.errors import DataError


def _cifar_tar(root, name="cifar10", n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    folder, files, label = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels")
        if name == "cifar10"
        else ("cifar-100-python", ["train", "test"], b"fine_labels")
    )
    k = 10 if name == "cifar10" else 100
    truth = {}
    arch = root / ("cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(arch, "w:gz") as tar:
        for f in files:
            n = n_test if "test" in f else n_train
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, k, n).tolist()
            truth[f] = (data, labels)
            blob = pickle.dumps({b"batch_label": b"x", label: labels, b"data": data}, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{f}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return arch, truth


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_tarball_parsed_exactly(tmp_path, name):
    arch, truth = _cifar_tar(tmp_path / "c", name)
    d = load_data(name, data_dir=tmp_path / "c", do_normalize=False)
    tr = [f for f in truth if "test" not in f]
    x = np.concatenate([truth[f][0] for f in tr]).reshape(-1, 3, 32, 32)
    y = np.concatenate([truth[f][1] for f in tr])
    order = np.argsort(np.arange(len(y)))
    assert d.train.x.shape == (len(y), 3, 32, 32) and d.in_shape == (3, 32, 32)
    assert np.array_equal((d.train.x.numpy() * 255).round().astype(np.uint8), x[order])
    assert np.array_equal(d.train.y.numpy(), y)
    assert d.num_classes == (10 if name == "cifar10" else 100)
    rows = check_dataset(name, tmp_path / "c")
    assert rows[0]["file"] == arch.name and not rows[0]["ok"]  # our tiny tarball is not the official one


def test_cifar_hostile_pickle_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    root = tmp_path / "c"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps(Evil())
            info = tarfile.TarInfo(f"cifar-10-batches-py/{f}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match="refusing to load"):
        load_data("cifar10", data_dir=root)
    assert not (tmp_path / "pwned").exists()


def test_cifar_truncated_tarball(tmp_path):
    arch, _ = _cifar_tar(tmp_path / "c")
    arch.write_bytes(arch.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_data("cifar10", data_dir=tmp_path / "c")


def _svhn(root, n=12, seed=0, extra=False):
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split in ("train", "test") + (("extra",) if extra else ()):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": X, "y": y})
        truth[split] = (X, y)
    return truth


def test_svhn_mat_parsed_exactly(tmp_path):
    truth = _svhn(tmp_path / "s", extra=True)
    d = load_data("svhn", data_dir=tmp_path / "s", do_normalize=False, extra=True)
    X, y = truth["train"]
    got = (d.train.x[:12].numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(got, X.transpose(3, 2, 0, 1))
    expect_y = y.reshape(-1).astype(np.int64) % 10  # label 10 is digit 0
    assert np.array_equal(d.train.y[:12].numpy(), expect_y)
    assert len(d.train) == 24  # train + extra
    rows = {r["file"]: r for r in check_dataset("svhn", tmp_path / "s")}
    assert not rows["train_32x32.mat"]["ok"] and "md5" in rows["train_32x32.mat"]["how"]


def test_svhn_truncated_mat(tmp_path):
    _svhn(tmp_path / "s")
    p = tmp_path / "s" / "train_32x32.mat"
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated or not a MATLAB file"):
        load_data("svhn", data_dir=tmp_path / "s")


def test_imagefolder_parsed_exactly(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    truth = {}
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
                truth[(split, cls, i)] = arr
    d = load_data("imagefolder", data_dir=tmp_path, do_normalize=False)
    assert d.num_classes == 2 and d.train.x.shape == (6, 3, 8, 8)
    got = (d.train.x[3].numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0)
    assert np.array_equal(got, truth[("train", "dog", 0)]) and d.train.y[3].item() == 1
    (tmp_path / "val" / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not an image"):
        load_data("imagefolder", data_dir=tmp_path)


def _assert_extract_refused(arch, tmp_path):
    """safe_extract refuses the archive, extracts nothing, and nothing lands outside."""
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(DataError, match="leaves the target folder"):
        safe_extract(arch, target)
    assert list(target.iterdir()) == [] and not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("member", ["../escape.txt", "/abs/escape.txt", "link"])
def test_safe_extract_refuses_escapes(tmp_path, member):
    arch = tmp_path / "a.tar"
    with tarfile.open(arch, "w") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type = tarfile.SYMTYPE
            info.linkname = "../../etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    _assert_extract_refused(arch, tmp_path)


def test_safe_extract_ok(tmp_path):
    arch = tmp_path / "a.tar"
    with tarfile.open(arch, "w") as tar:
        info = tarfile.TarInfo("d/f.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    safe_extract(arch, tmp_path / "t")
    assert (tmp_path / "t" / "d" / "f.txt").read_bytes() == b"hi"


def test_download_verifies_and_keeps_users_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "dest.bin"
    dest.write_bytes(b"the user's old file")
    with pytest.raises(DataError, match="failed its checksum"):
        download(src.as_uri(), dest, md5="0" * 32, quiet=True)
    assert dest.read_bytes() == b"the user's old file"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp file removed
    import hashlib

    download(src.as_uri(), dest, md5=hashlib.md5(b"payload").hexdigest(), quiet=True)
    assert dest.read_bytes() == b"payload"


def test_augmentation_is_a_function_of_seed_key_index():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    idx = torch.tensor([5, 9])
    a = crop_flip(x, idx, seed=1, key=3, pad=2)
    b = crop_flip(x.flip(0), idx.flip(0), seed=1, key=3, pad=2).flip(0)  # other batch order
    assert torch.equal(a, b)
    c = crop_flip(x, idx, seed=1, key=4, pad=2)
    assert not torch.equal(a, c)
    r = view_randoms(0, 0, torch.arange(4000), 3)
    assert (r >= 0).all() and 0.45 < (r[:, 2] % 2).float().mean() < 0.55


def test_crop_is_a_shifted_window():
    x = torch.randn(1, 2, 5, 5)
    out = crop_flip(x, torch.tensor([0]), seed=0, key=0, pad=2, flip=False)
    r = view_randoms(0, 0, torch.tensor([0]), 3)
    dy, dx = int(r[0, 0] % 5), int(r[0, 1] % 5)
    padded = torch.nn.functional.pad(x, [2] * 4)
    assert torch.equal(out, padded[:, :, dy : dy + 5, dx : dx + 5])


def test_gcn_zca_whitens_train_and_uses_train_stats_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPPORTNET_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    train = torch.randn(400, 2, 4, 4, generator=g) @ torch.randn(4, 4, generator=g)
    test = torch.randn(50, 2, 4, 4, generator=g)
    a_tr, a_te = gcn_zca(train, test)
    flat = a_tr.reshape(400, -1).double()
    cov = (flat - flat.mean(0)).t() @ (flat - flat.mean(0)) / 400
    assert (cov.diagonal() - 1).abs().max() < 0.1 and cov.fill_diagonal_(0).abs().max() < 0.1
    b_tr, b_te = gcn_zca(train, test * 7)  # test data do not influence the statistics
    assert torch.allclose(a_tr, b_tr)
    assert len(list((tmp_path / "zca").iterdir())) == 1  # cached once, keyed by the inputs
    assert torch.allclose(
        gcn(torch.ones(1, 3, 2, 2) * 4 + torch.arange(4.0).reshape(1, 1, 2, 2)).mean(), torch.tensor(0.0), atol=1e-6
    )


def test_fetch_dataset_from_mirror_verifies(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    from test_data import _fake_idx_set

    from supportnet import data as D

    mirror = _fake_idx_set(tmp_path / "mirror")
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in mirror.iterdir()}
    spec = dataclasses.replace(D.DATASETS["mnist"], urls=(mirror.as_uri() + "/",), md5=md5, raw_sha256={})
    monkeypatch.setitem(D.DATASETS, "mnist", spec)
    dest = D.fetch_dataset("mnist", tmp_path / "dl", quiet=True)
    assert all(r["ok"] for r in D.check_dataset("mnist", dest))
    bad = dataclasses.replace(spec, md5={k: "0" * 32 for k in md5})
    monkeypatch.setitem(D.DATASETS, "mnist", bad)
    with pytest.raises(DataError, match="failed its checksum"):
        D.fetch_dataset("mnist", tmp_path / "dl2", quiet=True)
    assert list((tmp_path / "dl2").iterdir()) == []


def test_fetch_extract_uses_safe_extract(tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    from supportnet import data as D

    arch, _ = _cifar_tar(tmp_path / "mirror")
    spec = dataclasses.replace(
        D.DATASETS["cifar10"],
        urls=((tmp_path / "mirror").as_uri() + "/",),
        md5={arch.name: hashlib.md5(arch.read_bytes()).hexdigest()},
    )
    monkeypatch.setitem(D.DATASETS, "cifar10", spec)
    dest = D.fetch_dataset("cifar10", tmp_path / "dl", quiet=True, extract=True)
    assert (dest / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert len(load_data("cifar10", data_dir=dest, do_normalize=False).train) == 100


@pytest.mark.parametrize("member", ["../escape.txt", "/abs/escape.txt", "link"])
def test_safe_extract_refuses_zip_escapes(tmp_path, member):
    import zipfile

    arch = tmp_path / "a.zip"
    with zipfile.ZipFile(arch, "w") as z:
        info = zipfile.ZipInfo(member)
        if member == "link":
            info.external_attr = 0o120777 << 16
            z.writestr(info, "../../etc/passwd")
        else:
            z.writestr(info, "x")
    _assert_extract_refused(arch, tmp_path)


def test_safe_extract_zip_ok(tmp_path):
    import zipfile

    arch = tmp_path / "a.zip"
    with zipfile.ZipFile(arch, "w") as z:
        z.writestr("d/f.txt", "hello")
    assert safe_extract(arch, tmp_path / "t") == ["d/f.txt"]
    assert (tmp_path / "t" / "d" / "f.txt").read_text() == "hello"
