import pytest
import yaml
from conftest import ROOT, assert_user_error

from supportnet.config import load_config
from supportnet.data import DATASETS
from supportnet.models import list_models

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_is_a_config_per_table_row():
    names = {p.stem for p in CONFIGS}
    for t in (
        "t2-allcnn-a",
        "t2-allcnn-b",
        "t2-allcnn-c",
        "t3-allcnn-c",
        "t4-allcnn-c-cifar100",
        "t5-nin-mnist",
        "t6-nin-svhn",
        "t7-allcnn-c",
        "t8-resnet18",
        "t8-vgg16",
        "t8-googlenet",
    ):
        assert any(n.startswith(t) for n in names), t
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_names_exist(path):
    raw = yaml.safe_load(path.read_text())
    assert raw["paper"]["scale"] in ("gpu", "cpu")
    cfg = load_config(path)
    assert cfg.model.name in list_models() and cfg.data.name in DATASETS


def test_missing_data_set_says_how_to_fetch(cli, tmp_path):
    p = cli(
        "train",
        "--config",
        ROOT / "configs" / "t2-allcnn-c-cifar10-sgd.yaml",
        "--out",
        tmp_path / "o",
        env={"SUPPORTNET_DATA": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert_user_error(p, "cifar10", "supportnet data fetch cifar10")


@pytest.mark.parametrize("method", ["sgd", "b-alt", "i-alt"])
def test_allcnn_c_one_epoch_on_tiny_cifar_file(cli, tmp_path, method):
    from test_formats import _cifar_tar

    _cifar_tar(tmp_path / "c", n_train=40, n_test=20)
    p = cli(
        "train",
        "--model",
        "allcnn-c",
        "--data",
        "cifar10",
        "--data-dir",
        tmp_path / "c",
        "--method",
        method,
        "--epochs",
        "1",
        "--out",
        tmp_path / "run",
        "--quiet",
        "--set",
        "support.warmup=0",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.train_eval_size=0",
    )
    assert p.returncode == 0, p.stderr
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert rows[0]["phase"] == {"sgd": "sgd", "b-alt": "b-alt", "i-alt": "i-alt"}[method]
    assert float(rows[0]["obj_loss"]) == float(rows[0]["obj_loss"])  # finite, not NaN


def test_make_configs_reproduces_every_committed_config(tmp_path):
    """scripts/make_configs.py writes exactly the committed configs/: the same files, byte for byte."""
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_configs.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    made = {f.name: f.read_bytes() for f in tmp_path.glob("*.yaml")}
    committed = {f.name: f.read_bytes() for f in CONFIGS}
    assert sorted(made) == sorted(committed)
    differ = [n for n in committed if made[n] != committed[n]]
    assert not differ, f"regenerated configs differ from the committed ones: {differ}"
