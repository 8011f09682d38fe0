import os

import numpy as np
import pytest
import torch

from supportnet.data import batches, check_dataset, epoch_order, find_root, load_data, search_dirs
from supportnet.data.idx import read_idx, write_idx
from supportnet.errors import DataError


def _fake_idx_set(root, n_train=60, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / f"train-images-idx3-ubyte{ext}", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(root / f"train-labels-idx1-ubyte{ext}", rng.integers(0, 10, n_train).astype(np.uint8))
    write_idx(root / f"t10k-images-idx3-ubyte{ext}", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(root / f"t10k-labels-idx1-ubyte{ext}", rng.integers(0, 10, n_test).astype(np.uint8))
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), a)
    assert np.array_equal(read_idx(p), a)
    b = np.array([1.5, -2.0], dtype=np.float32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f.idx", b)), b)


def test_idx_truncated_and_corrupt(tmp_path):
    p = write_idx(tmp_path / "a.idx", np.zeros((5, 4, 4), dtype=np.uint8))
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)
    g = write_idx(tmp_path / "b.idx.gz", np.zeros((5, 4, 4), dtype=np.uint8))
    g.write_bytes(g.read_bytes()[:20])
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        read_idx(g)
    (tmp_path / "c.idx").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "c.idx")


def test_lookup_order(tmp_path, monkeypatch):
    a = _fake_idx_set(tmp_path / "a" / "mnist")
    b = _fake_idx_set(tmp_path / "b")
    monkeypatch.setenv("SUPPORTNET_DATA", str(tmp_path / "a"))
    assert find_root("mnist") == a  # $SUPPORTNET_DATA/<name>
    assert find_root("mnist", data_dir=b) == b  # --data-dir wins
    assert search_dirs("mnist", data_dir=b) == [b, b / "mnist"]  # an explicit folder is the only place looked
    assert search_dirs("mnist")[-1] == __import__("pathlib").Path("/usr/share/datasets/mnist")
    (b / "t10k-labels-idx1-ubyte.gz").unlink()  # 3 of 4 files: refused, not taken from $SUPPORTNET_DATA
    with pytest.raises(DataError, match="holds 3 of the 4 files of mnist: missing t10k-labels-idx1-ubyte.gz"):
        find_root("mnist", data_dir=b)


def test_missing_data_dir_and_missing_set(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPPORTNET_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        find_root("mnist", data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match="not found"):
        find_root("mnist")
    with pytest.raises(DataError, match="unknown data set"):
        find_root("cifar-1000")


def test_load_uncompressed_subset_pad_normalize(tmp_path):
    root = _fake_idx_set(tmp_path / "d", gz=False)
    d = load_data("mnist", data_dir=root, subset=25, pad=2)
    assert d.train.x.shape == (25, 1, 32, 32) and d.test.x.shape == (20, 1, 32, 32)
    assert abs(d.train.x.mean().item()) < 1e-5 and abs(d.train.x.std().item() - 1) < 1e-2
    d2 = load_data("mnist", data_dir=root, subset=25, val=10)
    assert len(d2.train) == 25 and len(d2.val) == 10


def test_test_subset_is_fixed_across_seeds(tmp_path):
    root = _fake_idx_set(tmp_path / "d", gz=False)
    full = load_data("mnist", data_dir=root, do_normalize=False)
    a = load_data("mnist", data_dir=root, test_subset=7, seed=0, do_normalize=False)
    b = load_data("mnist", data_dir=root, test_subset=7, seed=5, subset=25, do_normalize=False)
    assert len(a.test) == 7 and torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    # the kept examples are real test examples, in their original order, labels matched
    pos = [next(j for j in range(len(full.test)) if torch.equal(full.test.x[j], a.test.x[i])) for i in range(7)]
    assert pos == sorted(pos) and torch.equal(full.test.y[pos], a.test.y)
    assert len(load_data("mnist", data_dir=root, test_subset=1000).test) == len(full.test)  # larger: whole set
    with pytest.raises(DataError, match="test_subset"):
        load_data("mnist", data_dir=root, test_subset=0)


def test_loader_yields_index_and_order_is_seeded(synthetic):
    o1, o2 = epoch_order(100, 0, 3), epoch_order(100, 0, 3)
    assert torch.equal(o1, o2) and not torch.equal(o1, epoch_order(100, 0, 4))
    seen = []
    for x, y, idx in batches(synthetic.train, 100, epoch_order(len(synthetic.train), 1, 0)):
        assert torch.equal(x, synthetic.train.x[idx]) and torch.equal(y, synthetic.train.y[idx])
        seen.append(idx)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(len(synthetic.train)))


def test_check_dataset_reports_bad_checksum(tmp_path):
    root = _fake_idx_set(tmp_path / "m")
    rows = check_dataset("mnist", root)
    assert len(rows) == 4 and not any(r["ok"] for r in rows)
    assert all("md5 does not match" in r["how"] for r in rows)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Debian's Fashion-MNIST absent")
def test_debian_fashion_mnist_verifies():
    rows = check_dataset("fashion-mnist")
    assert all(r["ok"] for r in rows), rows
