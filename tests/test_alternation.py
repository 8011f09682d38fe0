import copy

import pytest
import torch

from supportnet.alternation import IAlternation, make_schedule
from supportnet.checkpoint import load_checkpoint
from supportnet.config import SupportConfig, load_config
from supportnet.data import Split, batches, epoch_order
from supportnet.layers import record_masks, threshold_layers
from supportnet.masks import PackedMasks
from supportnet.models import create_model
from supportnet.train import fit


def _model(synthetic, seed=0):
    torch.manual_seed(seed)
    return create_model("convnet-s", in_shape=synthetic.in_shape, num_classes=10, width=8, hidden=32)


@pytest.mark.parametrize("store", ["memory", "file"])
def test_stored_and_snapshot_masks_are_bit_identical(synthetic, tmp_path, store):
    model = _model(synthetic)
    stored = IAlternation(
        SupportConfig(method="i-alt", backend="stored", store=store, warmup=0),
        model,
        synthetic.train,
        torch.device("cpu"),
        tmp_path,
        eval_batch_size=97,
    )
    snap = IAlternation(
        SupportConfig(method="i-alt", backend="snapshot", warmup=0),
        copy.deepcopy(model),
        synthetic.train,
        torch.device("cpu"),
        tmp_path,
        eval_batch_size=97,
    )
    stored.start_epoch(0)
    snap.start_epoch(0)
    n_bits = 0
    for x, _, idx in batches(synthetic.train, 64, epoch_order(len(synthetic.train), 0, 0)):
        a, b = stored.masks_for(x, idx), snap.masks_for(x, idx)
        if isinstance(a, PackedMasks):  # the CPU kernels read (and record) the supports packed
            assert isinstance(b, PackedMasks) and torch.equal(a.rows, b.rows)
            a, b = a.unpack(), b.unpack()
        for ma, mb in zip(a, b):
            assert ma.dtype == torch.bool and torch.equal(ma, mb)
            n_bits += ma.numel()
    assert n_bits == len(synthetic.train) * sum(m.shape[1:].numel() for m in a)
    if store == "file":
        assert stored.store.path.exists() and stored.store.path.suffix == ".smask"


def test_stored_and_snapshot_give_identical_weights_after_a_round(synthetic, tmp_path):
    finals = {}
    for backend in ("stored", "snapshot"):
        cfg = load_config(
            None,
            [
                "data.name=synthetic",
                "train.epochs=3",
                "support.method=i-alt",
                f"support.backend={backend}",
                "support.warmup=1",
                "support.min_gap=2",
                "support.max_gap=2",
                "model.kwargs={width: 8, hidden: 32}",
                f"out={tmp_path / backend}",
                "quiet=true",
                "train.train_eval_size=0",
            ],
        )
        run = fit(cfg, data=synthetic)
        finals[backend] = load_checkpoint(run / "final.pt")["state_dict"]
    for k in finals["stored"]:
        assert torch.equal(finals["stored"][k], finals["snapshot"][k]), k


def test_i_alt_rounds_follow_min_and_max_gap(synthetic, tmp_path):
    cfg = load_config(
        None,
        [
            "data.name=synthetic",
            "train.epochs=6",
            "support.method=i-alt",
            "support.warmup=1",
            "support.min_gap=2",
            "support.max_gap=2",
            "model.kwargs={width: 8, hidden: 32}",
            f"out={tmp_path}",
            "quiet=true",
            "train.train_eval_size=0",
        ],
    )
    run = fit(cfg, data=synthetic)
    import csv

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["phase"] for r in rows] == ["warmup"] + ["i-alt"] * 5
    assert [int(r["reestimated"]) for r in rows] == [0, 1, 0, 1, 0, 1]
    assert rows[1]["mask_change"] == "nan" and 0 <= float(rows[3]["mask_change"]) <= 1
    assert [int(r["round"]) for r in rows] == [0, 1, 1, 2, 2, 3]


def test_plateau_triggers_reestimation(synthetic):
    model = _model(synthetic)
    s = IAlternation(
        SupportConfig(method="i-alt", warmup=0, min_gap=1, max_gap=10, plateau_tol=0.05, patience=1),
        model,
        synthetic.train,
        torch.device("cpu"),
    )
    s.start_epoch(0)
    s.end_epoch(1.0)
    assert not s.need_new  # no previous loss yet
    s.start_epoch(1)
    s.end_epoch(0.5)  # 50% drop: still improving
    assert not s.need_new
    s.start_epoch(2)
    s.end_epoch(0.49)  # 2% drop < 5%: plateau
    assert s.need_new


def test_b_alt_sets_batch_mode_after_warmup(synthetic):
    model = _model(synthetic)
    s = make_schedule(SupportConfig(method="b-alt", warmup=2, rule="vote"), model, synthetic.train, "cpu")
    assert s.start_epoch(0).phase == "warmup"
    assert all(lay.mode == "free" for _, lay in threshold_layers(model))
    assert s.start_epoch(2).phase == "b-alt"
    assert all(lay.mode == "batch" and lay.rule == "vote" for _, lay in threshold_layers(model))


def _bools(masks):
    """Bool masks from what masks_for gives: packed rows where the kernels read them packed."""
    return masks.unpack() if isinstance(masks, PackedMasks) else masks


def test_snapshot_is_frozen(synthetic):
    model = _model(synthetic)
    s = IAlternation(SupportConfig(method="i-alt", warmup=0), model, synthetic.train, torch.device("cpu"))
    s.start_epoch(0)
    x = synthetic.train.x[:8]
    before = [m.clone() for m in _bools(s.masks_for(x, torch.arange(8)))]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    after = _bools(s.masks_for(x, torch.arange(8)))
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert not all(torch.equal(a, b) for a, b in zip(before, record_masks(model.eval(), x)))


def test_stored_masks_match_the_augmented_views_of_the_round(synthetic, tmp_path):
    """With augmentation, example i's view in round r is fixed by (seed, r, i), so stored masks stay exact."""
    from supportnet.data.augment import crop_flip

    model = _model(synthetic)
    frozen = copy.deepcopy(model).eval()
    s = IAlternation(
        SupportConfig(method="i-alt", backend="stored", warmup=0),
        model,
        synthetic.train,
        torch.device("cpu"),
        tmp_path,
        eval_batch_size=100,
        augment_seed=7,
    )
    s.start_epoch(0)
    key = s.view_key(0)
    assert key == s.view_key(1)  # the same view all round
    idx = torch.tensor([3, 500, 17, 1000])
    x = crop_flip(synthetic.train.x[idx], idx, 7, key)
    assert not torch.equal(x, synthetic.train.x[idx])  # the views really are augmented
    for a, b in zip(_bools(s.masks_for(x, idx)), record_masks(frozen, x)):
        assert torch.equal(a, b)


def test_reestimate_counts_mask_change_as_rows_arrive(synthetic):
    """The between-rounds change counted while the new store is written equals a full comparison."""
    model = _model(synthetic)
    ia = IAlternation(
        SupportConfig(method="i-alt", backend="stored", warmup=0), model, synthetic.train, torch.device("cpu")
    )
    ia.start_epoch(0)
    first = ia.store
    with torch.no_grad():  # move the weights so that some supports change
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ev = ia.reestimate()
    assert 0 < ev["mask_change"] < 1
    assert ev["mask_change"] == ia.store.changed_fraction(first)
    assert ia.store.checksum == ia.store._digest()  # the digest taken in order is the payload's


def test_snapshot_mask_change_from_packed_probe(synthetic):
    """The snapshot back end keeps its probe supports packed; the change between rounds is the
    fraction of probe bits that differ, as computed from the unpacked masks."""
    model = _model(synthetic)
    ia = IAlternation(
        SupportConfig(method="i-alt", backend="snapshot", warmup=0), model, synthetic.train, torch.device("cpu")
    )
    ia.start_epoch(0)
    n = ia._probe_prev.shape[0]
    before = torch.cat([m.reshape(n, -1) for m in record_masks(model.eval(), synthetic.train.x[:n])], 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = torch.cat([m.reshape(n, -1) for m in record_masks(model.eval(), synthetic.train.x[:n])], 1)
    ev = ia.reestimate()
    assert ia._probe_prev.dtype.name == "uint8" and ia._probe_prev.shape == (n, -(-before.shape[1] // 8))
    assert ev["mask_change"] == pytest.approx((before != after).double().mean().item(), rel=1e-12)
    assert 0 < ev["mask_change"] < 1


def test_stored_supports_are_placed_on_the_device_once_per_store(monkeypatch):
    """I-alt stored copies each new store to the device when it fits (here forced, on the CPU):
    once per store, again after a re-estimation (whose old copy is dropped first), and a store
    whose copy runs out of memory falls back to the pinned path."""
    import importlib

    from supportnet.masks import MaskStore

    alt_mod = importlib.import_module("supportnet.alternation")  # (supportnet.alternation is also a function)

    torch.manual_seed(0)
    model = create_model("convnet-s", (1, 8, 8), 3, width=4, hidden=8)
    split = Split(torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,)))
    sched = make_schedule(SupportConfig(method="i-alt", backend="stored", warmup=0), model, split, torch.device("cpu"))
    monkeypatch.setattr(alt_mod, "fits_on_device", lambda nbytes, device: True)
    placed = []
    real = MaskStore.to_device
    monkeypatch.setattr(MaskStore, "to_device", lambda self, d: placed.append(self) or real(self, d))
    sched.start_epoch(0)
    for _ in range(3):
        sched.before_step(split.x[:4], torch.arange(4))
    first = sched.store
    assert placed == [first] and first._device_payload is not None
    sched.reestimate()
    assert first._device_payload is None  # dropped before the new round's estimation
    sched.before_step(split.x[:4], torch.arange(4))
    assert placed == [first, sched.store] and sched.store is not first

    def out_of_memory(self, d):
        self._device_payload = torch.zeros(1)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(MaskStore, "to_device", out_of_memory)
    sched.reestimate()
    sched.before_step(split.x[:4], torch.arange(4))
    assert sched.store._device_payload is None and sched._placed is sched.store
