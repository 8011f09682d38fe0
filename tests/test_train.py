import json

import pytest
import torch

from supportnet.checkpoint import load_checkpoint
from supportnet.config import load_config
from supportnet.errors import DivergenceError
from supportnet.train import fit, lr_at


def _cfg(tmp_path, *sets):
    return load_config(
        None,
        [
            "data.name=synthetic",
            "train.epochs=2",
            "model.kwargs={width: 8, hidden: 32}",
            f"out={tmp_path}",
            "quiet=true",
            *sets,
        ],
    )


@pytest.mark.parametrize("method", ["sgd", "b-alt", "i-alt"])
def test_fit_writes_run_folder(synthetic, tmp_path, method):
    run = fit(_cfg(tmp_path, f"support.method={method}", "train.maskt=true"), data=synthetic)
    for f in (
        "config.yaml",
        "metrics.csv",
        "curves.png",
        "checkpoint.pt",
        "final.pt",
        "model.safetensors",
        "summary.json",
    ):
        assert (run / f).is_file(), f
    s = json.loads((run / "summary.json").read_text())
    assert s["iterations"] == 2 * 8 and len(s["curve"]) == 2
    assert 0 <= s["test_acc"] <= 1
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in (
        "train_loss",
        "test_loss",
        "test_err",
        "maskt_acc",
        "iterations",
        "seconds",
        "reestimated",
        "mask_change",
        "active/features.1",
        "drift/classifier.3",
    ):
        assert col in header
    ck = load_checkpoint(run / "final.pt", kind="final")
    assert set(ck) == {"state_dict", "config", "metrics", "taus", "arch"}


def test_training_learns_synthetic(synthetic, tmp_path):
    run = fit(_cfg(tmp_path, "train.epochs=6", "train.lr=0.05"), data=synthetic)
    assert json.loads((run / "summary.json").read_text())["test_acc"] > 0.5


def test_same_seed_same_initial_weights_and_result(synthetic, tmp_path):
    a = fit(_cfg(tmp_path / "a", "train.epochs=1"), data=synthetic)
    b = fit(_cfg(tmp_path / "b", "train.epochs=1"), data=synthetic)
    sa, sb = load_checkpoint(a / "final.pt")["state_dict"], load_checkpoint(b / "final.pt")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_divergence_stops_and_keeps_last_good_checkpoint(synthetic, tmp_path):
    cfg = _cfg(tmp_path, "train.epochs=4", "train.lr=1e12", "train.schedule=constant", "train.momentum=0.0")
    with pytest.raises(DivergenceError, match="training objective became .* at epoch .*last good checkpoint"):
        fit(cfg, data=synthetic)
    ck = tmp_path / "checkpoint.pt"
    if ck.exists():  # any checkpoint written holds finite weights only
        sd = load_checkpoint(ck)["model"]
        assert all(torch.isfinite(v).all() for v in sd.values())
    assert not (tmp_path / "final.pt").exists()


def test_lr_schedules():
    cfg = load_config(None, ["train.epochs=10", "train.schedule=step", "train.milestones=[5, 8]", "train.gamma=0.1"])
    assert lr_at(cfg, 0, 100) == 1.0 and lr_at(cfg, 500, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 850, 100) == pytest.approx(0.01)
    cfg = load_config(None, ["train.epochs=10"])
    assert lr_at(cfg, 0, 100) == 1.0 and lr_at(cfg, 500, 100) == pytest.approx(0.5) and lr_at(cfg, 1000, 100) < 1e-9


def test_validation_split_is_evaluated(synthetic, tmp_path):
    from supportnet.data import load_data

    data = load_data("synthetic", val=200)
    assert len(data.train) == 1024 - 200 and len(data.val) == 200
    run = fit(_cfg(tmp_path, "train.epochs=1", "data.val=200"), data=data)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val_acc" in header and "val_loss" in header


def test_nonfinite_test_loss_stops_the_run(synthetic, tmp_path, monkeypatch):
    import supportnet.train as T

    monkeypatch.setattr(T, "evaluate", lambda *a, **k: (float("nan"), 0.1))
    with pytest.raises(DivergenceError, match="test loss became nan after epoch 1"):
        fit(_cfg(tmp_path, "train.epochs=2", "train.train_eval_size=0"), data=synthetic)
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "final.pt").exists()


@pytest.mark.parametrize("method", ["sgd", "b-alt", "i-alt"])
def test_fast_path_options_run_on_cpu(synthetic, tmp_path, method):
    """bf16 autocast, channels_last and the device-resident loader (off by default; the GPU
    figures are in docs/performance.md). On CPU they must still train to finite numbers."""
    run = fit(
        _cfg(tmp_path, f"support.method={method}", "train.amp=bf16", "train.channels_last=true", "train.loader=device"),
        data=synthetic,
    )
    s = json.loads((run / "summary.json").read_text())
    assert s["iterations"] == 16 and s["test_acc"] > 0.0 and torch.isfinite(torch.tensor(s["test_loss"]))


def test_fast_path_default_is_off():
    from supportnet.config import TrainConfig

    t = TrainConfig()
    assert (t.amp, t.channels_last, t.compile, t.loader) == ("off", False, False, "host")


def test_nonfinite_gradient_stops_before_the_update(synthetic, tmp_path):
    from supportnet.train import build

    cfg = _cfg(tmp_path, "train.epochs=1")
    data, model = build(cfg, synthetic)
    w = dict(model.named_parameters())["features.2.weight"]
    before = w.detach().clone()
    w.register_hook(lambda g: g * float("nan"))  # finite loss, a NaN gradient
    with pytest.raises(DivergenceError, match=r"gradient became non-finite at epoch 1, step 1 .*features\.2\.weight"):
        fit(cfg, data=data, model=model)
    assert torch.equal(w.detach(), before)  # never updated with it


def test_gpu_guard_skips_updates_on_the_device(synthetic, tmp_path, monkeypatch):
    """The GPU form of the divergence guard (no host sync per step): the fused SGD step skips its
    update on the device from the first non-finite step on, and the run stops at the next check.
    Forced on the CPU here; bench/gpu_check.sh runs the GPU path."""
    from supportnet.train import build

    monkeypatch.setenv("SUPPORTNET_LAZY_GUARD", "1")
    cfg = _cfg(tmp_path, "train.epochs=1")
    data, model = build(cfg, synthetic)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    dict(model.named_parameters())["features.2.weight"].register_hook(lambda g: g * float("nan"))
    with pytest.raises(
        DivergenceError,
        match=r"objective or gradient became non-finite between steps 1 and "
        r"\d+ \(epoch 1, .*the weights were not updated from that step on",
    ):
        fit(cfg, data=data, model=model)
    assert all(torch.equal(v.detach(), before[k]) for k, v in model.named_parameters())  # no update at all


def test_gpu_guard_trains_like_the_step_guard(synthetic, tmp_path, monkeypatch):
    """With finite steps the device-side guard trains normally (fused SGD: same numbers to float rounding)."""
    a = fit(_cfg(tmp_path / "a", "train.epochs=1"), data=synthetic)
    monkeypatch.setenv("SUPPORTNET_LAZY_GUARD", "1")
    b = fit(_cfg(tmp_path / "b", "train.epochs=1"), data=synthetic)
    sa, sb = load_checkpoint(a / "final.pt")["state_dict"], load_checkpoint(b / "final.pt")["state_dict"]
    assert all(torch.allclose(sa[k], sb[k], rtol=1e-4, atol=1e-5) for k in sa)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by bench/gpu_check.sh)")
def test_gpu_guard_on_cuda(synthetic, tmp_path):
    """On a GPU the guard is the device-side one: a NaN gradient stops the run, no parameter moved."""
    from supportnet.train import build

    cfg = _cfg(tmp_path, "train.epochs=1", "train.device=cuda")
    data, model = build(cfg, synthetic)
    model = model.cuda()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    dict(model.named_parameters())["features.2.weight"].register_hook(lambda g: g * float("nan"))
    with pytest.raises(
        DivergenceError, match=r"between steps 1 and \d+ .*the weights were not updated from that step on"
    ):
        fit(cfg, data=data, model=model)
    assert all(torch.equal(v.detach(), before[k]) for k, v in model.named_parameters())


def test_trace_train_loss_adds_the_free_mode_train_loss_to_every_trace_point(synthetic, tmp_path):
    on = fit(
        _cfg(tmp_path / "on", "train.evals_per_epoch=2", "train.trace_train_loss=true", "train.train_eval_size=100"),
        data=synthetic,
    )
    s = json.loads((on / "summary.json").read_text())
    assert len(s["trace"]) == 4 and all(0 < p["train_loss"] and 0 <= p["train_acc"] <= 1 for p in s["trace"])
    # the end-of-epoch points carry the epoch's own train evaluation (the same numbers as metrics.csv)
    assert [p["train_loss"] for p in s["trace"] if p["epoch"] in (1.0, 2.0)] == [c["train_loss"] for c in s["curve"]]
    off = fit(_cfg(tmp_path / "off", "train.evals_per_epoch=2", "train.train_eval_size=100"), data=synthetic)
    assert not any("train_loss" in p for p in json.loads((off / "summary.json").read_text())["trace"])


def test_fit_refuses_a_taken_run_folder_before_it_loads_the_data(tmp_path):
    """The folder is checked first (without writing), so a taken one is refused before the data
    is read: here the data set cannot be found, and the folder's refusal is what is said."""
    from supportnet.runfolder import RunFolderError

    (tmp_path / "notes.txt").write_text("mine")
    cfg = load_config(None, [f"out={tmp_path}", "quiet=true", f"data.data_dir={tmp_path / 'nowhere'}"])
    with pytest.raises(RunFolderError, match=r"already holds files \(notes\.txt\)"):
        fit(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
