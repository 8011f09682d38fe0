"""The streaming image-folder pipeline (ImageNet layout) on a folder the test writes."""

import json

import numpy as np
import pytest
import torch

from supportnet.config import load_config
from supportnet.data import batches, load_data
from supportnet.errors import ConfigError, DataError
from supportnet.train import fit


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c, cls in enumerate(("n01", "n02", "n03")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                w, h = int(rng.integers(40, 70)), int(rng.integers(40, 70))
                arr = (rng.random((h, w, 3)) * 80 + 60 * c).astype(np.uint8)
                Image.fromarray(arr).save(d / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (root / "train" / "n01" / "notes.txt").write_text("not an image; skipped")
    return root


def test_stream_decodes_crops_and_normalises(folder):
    data = load_data("imagefolder", folder, stream=True, image_size=32, workers=0)
    assert len(data.train) == 24 and len(data.test) == 9 and data.num_classes == 3 and data.in_shape == (3, 32, 32)
    x, y, idx = next(batches(data.train, 8, torch.arange(24)))
    assert x.shape == (8, 3, 32, 32) and y.tolist() == [0] * 8 and idx.tolist() == list(range(8))
    assert x.abs().max() < 5 and x.std() > 0.05  # normalised, not constant


def test_views_depend_on_seed_key_index_only(folder):
    data = load_data("imagefolder", folder, stream=True, image_size=32, workers=0)
    tr = data.train
    a = tr[5][0]
    tr.key = 1
    b = tr[5][0]
    tr.key = 0
    assert torch.equal(tr[5][0], a) and not torch.equal(a, b)  # same key, same view; new key, new view
    two = load_data("imagefolder", folder, stream=True, image_size=32, workers=2)
    order = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    for (x0, _, i0), (x2, _, i2) in zip(batches(tr, 6, order), batches(two.train, 6, order)):
        assert torch.equal(i0, i2) and torch.equal(x0, x2)  # workers do not change the views
    ev = data.test[0][0]
    assert torch.equal(ev, data.test[0][0])  # evaluation: a fixed central crop


@pytest.mark.parametrize("method", ["sgd", "i-alt"])
def test_stream_trains_one_short_epoch(folder, tmp_path, method):
    cfg = load_config(
        None,
        [
            "data.name=imagefolder",
            f"data.data_dir={folder}",
            "data.stream=true",
            "data.image_size=32",
            "data.workers=2",
            "model.name=resnet18",
            "model.kwargs={width: 8}",
            "train.epochs=2",
            "train.batch_size=8",
            "train.train_eval_size=0",
            "quiet=true",
            f"support.method={method}",
            f"out={tmp_path}",
        ],
    )
    run = fit(cfg)
    s = json.loads((run / "summary.json").read_text())
    assert s["iterations"] == 6 and np.isfinite(s["test_loss"])


def test_stream_rejects_what_it_cannot_do(folder, tmp_path):
    with pytest.raises(DataError, match="imagefolder only"):
        load_data("fashion-mnist", stream=True)
    cfg = load_config(
        None,
        [
            "data.name=imagefolder",
            f"data.data_dir={folder}",
            "data.stream=true",
            "support.method=i-alt",
            "support.backend=stored",
            f"out={tmp_path}",
        ],
    )
    with pytest.raises(ConfigError, match="backend=snapshot"):
        fit(cfg)
