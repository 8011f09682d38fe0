"""Loggers: metrics.csv always, JSON lines and TensorBoard on request, step scalars every
train.log_every steps, mask change at each re-estimation; no progress-bar updates in logs."""

import json

import pytest
from conftest import run_train

from supportnet.config import load_config
from supportnet.errors import ConfigError
from supportnet.train import fit


def _cfg(tmp_path, *sets):
    return load_config(
        None,
        ["data.name=synthetic", "train.epochs=2", "model.kwargs={width: 8, hidden: 32}", f"out={tmp_path}",
         "quiet=true", "support.method=i-alt", "support.backend=stored", "train.log_every=4", *sets],
    )  # fmt: skip


def test_jsonl_has_step_scalars_epoch_rows_and_mask_change(synthetic, tmp_path):
    run = fit(_cfg(tmp_path, "train.loggers=[jsonl]", "support.warmup=0"), data=synthetic)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [4, 8, 12, 16]  # 8 steps per epoch, every 4
    assert all(0 <= r["active/features.1"] <= 1 and r["lr"] > 0 for r in steps)
    epochs = [r for r in recs if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2] and all("test_acc" in r for r in epochs)
    changes = [r for r in recs if "mask_change" in r and "epoch" not in r]
    assert [r["step"] for r in changes] == [0, 8]  # a re-estimation at the start of each epoch
    assert changes[0]["mask_change"] is None and 0 <= changes[1]["mask_change"] <= 1  # none before the first
    assert (run / "metrics.csv").is_file()  # always written


def test_tensorboard_event_file_reads_back(synthetic, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = fit(_cfg(tmp_path, "train.loggers=[csv, tensorboard]"), data=synthetic)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "epoch/test_acc" in tags and "train/mask_change" in tags
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 8, 12, 16]
    assert [e.step for e in acc.Scalars("epoch/test_acc")] == [8, 16]
    assert all(0 <= e.value <= 1 for e in acc.Scalars("epoch/test_acc"))


def test_unknown_logger_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train.loggers"):
        _cfg(tmp_path, "train.loggers=[wandb]")


def test_resumed_jsonl_drops_lines_after_the_checkpoint(tmp_path):
    args = ["--set", "data.name=synthetic", "--set", "model.kwargs={width: 8, hidden: 32}", "--epochs", "2",
            "--set", "train.loggers=[jsonl]", "--set", "train.log_every=2", "--set", "train.checkpoint_steps=5",
            "--out", "run"]  # fmt: skip
    p = run_train(args, tmp_path, fault="step:7")  # killed after step 7; the last checkpoint is at step 5
    assert p.returncode != 0
    assert max(json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 6
    p = run_train(["--resume", "run"], tmp_path)
    assert p.returncode == 0, p.stderr[-1500:]
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [s for s in steps if s % 2 == 0 and s > 0]
    assert sorted(set(loss_steps)) == list(range(2, 17, 2))
    assert len([s for s in steps if s == 6]) == 1  # written once, not once before and once after the kill
    assert "\r" not in p.stderr  # no progress bar when stderr is not a terminal
