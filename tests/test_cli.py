import json

import numpy as np
import pytest
from conftest import assert_user_error

SMALL = ["--set", "model.kwargs={width: 8, hidden: 32}", "--set", "train.train_eval_size=0"]


def test_train_smoke_synthetic(cli, tmp_path):
    p = cli("train", "--data", "synthetic", "--epochs", "1", "--out", tmp_path / "run", "--quiet", *SMALL)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "run" / "final.pt").is_file()


def test_compare_smoke_synthetic(cli, tmp_path):
    out = tmp_path / "cmp"
    p = cli(
        "compare",
        "--data",
        "synthetic",
        "--model",
        "convnet-s",
        "--methods",
        "sgd,b-alt,i-alt[backend=stored]",
        "--epochs",
        "2",
        "--subset",
        "512",
        "--seed",
        "1",
        "--out",
        out,
        "--quiet",
        *SMALL,
    )
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert set(s["methods"]) == {"sgd", "b-alt", "i-alt[backend=stored]"}
    for m in s["methods"].values():
        assert isinstance(m["test_acc"], float) and 0 <= m["test_acc"] <= 1
        assert isinstance(m["iterations"], int) and m["iterations"] == 2 * 4
        assert isinstance(m["seconds"], float) and isinstance(m["test_loss"], float)
        assert [
            set(c) >= {"epoch", "iterations", "seconds", "train_loss", "test_loss", "test_acc"} for c in m["curve"]
        ] == [True, True]
    assert (out / "curves.png").stat().st_size > 1000
    table = (out / "table.md").read_text()
    assert "| sgd |" in table and table in p.stdout


def test_models_lists_registry(cli):
    p = cli("models")
    assert p.returncode == 0 and "convnet-s" in p.stdout and "mlp" in p.stdout


def _idx_files(root, truncate=None, corrupt=None):
    from supportnet.data.idx import write_idx

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 30).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 10).astype(np.uint8),
    }
    for name, arr in files.items():
        p = write_idx(root / name, arr)
        if name == truncate:
            p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
        if name == corrupt:
            write_idx(root / name, arr[:5] if arr.ndim == 3 else arr)  # header ok, but sizes mismatch below
            raw = __import__("gzip").decompress(p.read_bytes())
            p.write_bytes(__import__("gzip").compress(raw[:-9]))
    return root


BAD = {
    "unknown config key": (["train", "--set", "train.epochz=3"], ["unknown config key", "train.epochz"]),
    "wrong type": (["train", "--set", "train.lr=fast"], ["train.lr", "must be float"]),
    "unknown model": (["train", "--data", "synthetic", "--model", "resnet-9000"], ["unknown model", "resnet-9000"]),
    "unknown data set": (["train", "--data", "cifar-1000"], ["unknown data set", "cifar-1000"]),
    "unknown method (train)": (["train", "--method", "c-alt"], ["unknown support.method", "c-alt"]),
    "unknown method (compare)": (
        ["compare", "--data", "synthetic", "--methods", "sgd,x-alt"],
        ["unknown method", "x-alt"],
    ),
    "zero epochs": (["train", "--epochs", "0"], ["train.epochs", "positive"]),
    "negative epochs": (["compare", "--epochs", "-3"], ["train.epochs", "positive"]),
    "bad flag value": (["train", "--epochs", "ten"], ["invalid int value"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2(cli, case, tmp_path):
    args, words = BAD[case]
    assert_user_error(cli(*args, "--out", tmp_path / "o", cwd=tmp_path), *words)


def test_missing_data_dir(cli, tmp_path):
    assert_user_error(
        cli("train", "--data", "mnist", "--data-dir", tmp_path / "nowhere"), "data directory", "does not exist"
    )


def test_bad_config_file(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: [oops\n")
    assert_user_error(cli("train", "--config", cfg), "not valid YAML")


@pytest.mark.parametrize("kind", ["truncated", "corrupt"])
def test_truncated_or_corrupt_idx(cli, tmp_path, kind):
    root = tmp_path / "m"
    if kind == "truncated":
        _idx_files(root, truncate="train-images-idx3-ubyte.gz")
        words = ["truncated or corrupt gzip"]
    else:
        _idx_files(root, corrupt="t10k-images-idx3-ubyte.gz")
        words = ["truncated"]
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    assert_user_error(cli("train", "--data", "mnist", "--data-dir", root, "--out", tmp_path / "o"), *words)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # nothing of the user's touched


def test_data_check_missing_is_exit_2(cli, tmp_path):
    p = cli(
        "data", "check", "mnist", "--data-dir", tmp_path, env={"SUPPORTNET_DATA": str(tmp_path), "HOME": str(tmp_path)}
    )
    assert p.returncode == 2 and "NOT verified" in p.stdout


def test_theory_lift_check_cli(cli):
    p = cli("theory", "lift-check")
    assert p.returncode == 0, p.stderr
    assert "identity holds" in p.stdout and "conv-conv-fc (3 layers)" in p.stdout


def test_theory_planted_cli_small(cli, tmp_path):
    p = cli(
        "theory",
        "planted",
        "--d",
        "6",
        "--h",
        "3",
        "--o",
        "2",
        "--n",
        "120",
        "--starts",
        "4",
        "--max-steps",
        "500",
        "--out",
        tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "planted.json").is_file() and (tmp_path / "planted.png").is_file()
    assert "| 6 | 3 | 2 | 120 |" in p.stdout


def test_theory_bad_grid_is_user_error(cli):
    assert_user_error(cli("theory", "planted", "--widths", "5,x"), "--widths")


def test_theory_check_rip_cli_synthetic(cli, tmp_path):
    p = cli("theory", "check-rip", "--data", "synthetic", "--n", "32", "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    assert "lambda_min^2 / m" in p.stdout and "sufficient condition holds" in p.stdout
    r = json.loads((tmp_path / "check-rip.json").read_text())
    assert 0 <= r["lambda_min_sq_over_m"] <= r["lambda_max_sq_over_m"] and r["columns"] == 32 * 10


def test_cuda_device_without_gpu_is_user_error(cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert_user_error(
        cli("train", "--data", "synthetic", "--set", "train.device=cuda", "--out", tmp_path / "o"),
        "train.device=cuda",
        "no CUDA device",
    )
