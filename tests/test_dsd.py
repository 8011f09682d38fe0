import json

import pytest
import torch
from conftest import assert_user_error

from supportnet.config import load_config
from supportnet.dsd import (
    Enforcer,
    channel_norm_pruning,
    compact,
    dsd,
    export_compact,
    find_units,
    magnitude_pruning,
    pruned_counts,
    revive,
    support_census,
    unit_pruning,
)
from supportnet.layers import configure
from supportnet.models import count_params, create_model
from supportnet.train import fit


def _cfg(tmp_path, *sets):
    return load_config(
        None,
        [
            "data.name=synthetic",
            "model.kwargs={width: 8, hidden: 32}",
            "quiet=true",
            "train.train_eval_size=0",
            "train.checkpoint_every=0",
            f"out={tmp_path}",
            "dsd.dense_epochs=1",
            "dsd.sparse_epochs=2",
            "dsd.redense_epochs=1",
            *sets,
        ],
    )


def _pruned_model(synthetic):
    torch.manual_seed(0)
    model = create_model("convnet-s", synthetic.in_shape, 10, width=8, hidden=32)
    units, skipped = find_units(model)
    assert [u.act for u in units] == ["features.1", "features.3", "features.5", "classifier.3"] and not skipped
    # a census in which every other channel of every unit was never on
    census = {u.act: (torch.tensor([0 if c % 2 else 5 for c in range(u.channels)]), 5) for u in units}
    return model, units, unit_pruning(model, units, census, eps=0.0)


def test_unit_pruning_removes_weights_in_and_out():
    model = create_model("convnet-s", (1, 28, 28), 10, width=8, hidden=32)
    units, _ = find_units(model)
    census = {u.act: (torch.tensor([0] + [3] * (u.channels - 1)), 3) for u in units}
    pr = unit_pruning(model, units, census, eps=0.0)
    assert pr.units == {u.act: [0] for u in units}
    assert not pr.keep["features.0.weight"][0].any() and not pr.keep["features.0.bias"][0]
    w2 = pr.keep["features.2.weight"]  # consumer of unit 1 (column 0) and producer of unit 2 (row 0)
    assert not w2[:, 0].any() and not w2[0].any() and w2[1:, 1:].all()
    block = 7 * 7  # classifier.2 reads the flattened 16x7x7 map: channel 0 is its first 49 columns
    c2 = pr.keep["classifier.2.weight"]  # also the producer of classifier.3 (row 0)
    assert not c2[:, :block].any() and not c2[0].any() and c2[1:, block:].all()


def test_residual_and_output_layers_are_left_alone():
    units, skipped = find_units(create_model("resnet18", (3, 32, 32), 10, width=8))
    assert {u.act for u in units} == {f"layer{i}.{j}.act1" for i in range(1, 5) for j in range(2)}
    assert any("stem" in s for s in skipped)  # the stem feeds a residual sum
    units, skipped = find_units(create_model("nin-mnist", (1, 28, 28), 10))
    assert any(s.startswith("net.21") for s in skipped)  # NIN's class maps have no consumer


@pytest.mark.parametrize("method", ["sgd", "b-alt", "i-alt"])
def test_pruned_weights_stay_exactly_zero_through_the_sparse_step(synthetic, tmp_path, method):
    model, units, pr = _pruned_model(synthetic)
    enforce = Enforcer(pr)
    checks = []

    def hook(m, opt):
        enforce(m, opt)
        params = dict(m.named_parameters())
        for n, keep in pr.keep.items():
            p = params[n]
            assert torch.all(p[~keep] == 0), n
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                assert torch.all(buf[~keep] == 0), n
            if p.grad is not None:
                assert torch.all(p.grad[~keep] == 0), n  # the gradient was masked too
        checks.append(1)

    cfg = _cfg(tmp_path, f"support.method={method}", "support.warmup=0", "train.epochs=1")
    fit(cfg, data=synthetic, model=model, step_hook=hook)
    assert len(checks) == 1 + 8  # before training, then after each of the 8 steps
    enforce.release()
    # re-dense: they start at zero (consumer side; a dead unit's producer is redrawn) and train again
    assert all(torch.all(dict(model.named_parameters())[n][~k] == 0) for n, k in pr.keep.items())
    x = synthetic.test.x[:16]
    model.eval()
    configure(model, mode="free")
    with torch.no_grad():
        before = model(x)
        assert revive(model, units, pr) == [u.act for u in units]
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)  # the function is unchanged
    fit(_cfg(tmp_path / "re", "train.epochs=1"), data=synthetic, model=model)
    w = dict(model.named_parameters())["classifier.4.weight"]  # consumer of classifier.3 only
    assert (w[~pr.keep["classifier.4.weight"]] != 0).any()


def test_compact_model_matches_masked_model(synthetic):
    model, units, pr = _pruned_model(synthetic)
    Enforcer(pr)(model, torch.optim.SGD(model.parameters(), lr=0.1))
    small = compact(model, units, pr)
    assert count_params(small) < 0.5 * count_params(model)
    x = synthetic.test.x[:32]
    model.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)


def test_magnitude_pruning_per_layer():
    model = create_model("convnet-s", (1, 28, 28), 10, width=8, hidden=32)
    pr = magnitude_pruning(model, 0.3)
    for n, keep in pr.keep.items():
        assert abs((~keep).float().mean().item() - 0.3) < 0.01, n


def test_support_census_counts_batches_and_examples(synthetic):
    torch.manual_seed(0)
    model = create_model("convnet-s", synthetic.in_shape, 10, width=8, hidden=32)
    units, _ = find_units(model)
    b = support_census(model, units, synthetic.train, 64, "b", 0)
    i = support_census(model, units, synthetic.train, 64, "i", 0)
    n = len(synthetic.train)
    assert all(v[1] == -(-n // 64) for v in b.values()) and all(v[1] == n for v in i.values())
    assert all((v[0] <= v[1]).all() for v in list(b.values()) + list(i.values()))


@pytest.mark.parametrize("prune", ["magnitude", "support-b", "support-i"])
def test_dsd_end_to_end_and_compact_export(synthetic, tmp_path, prune, cli):
    res = dsd(_cfg(tmp_path, f"dsd.prune={prune}", "dsd.eps=0.2"), tmp_path, data=synthetic, log=lambda *_: None)
    assert set(res["phases"]) == {"dense", "sparse", "redense"}
    assert 0 < res["sparsity"]["weights"] < 1
    if prune == "magnitude":
        assert abs(res["sparsity"]["weights"] - 0.3) < 0.01
    saved = json.loads((tmp_path / "dsd.json").read_text())
    assert saved["params"] == res["params"]
    if prune != "magnitude":
        p = cli("export", "--compact", tmp_path / "sparse.pt", "-o", tmp_path / "small.pt")
        assert p.returncode == 0, p.stderr
        assert "parameters" in p.stdout and (tmp_path / "small.pt").is_file()
        info = export_compact(tmp_path / "sparse.pt", tmp_path / "small2.pt")
        assert info["max_abs_diff"] <= 1e-5 and info["params_after"] == res["params"]["compact"]


def test_dsd_bad_inputs(cli, tmp_path):
    assert_user_error(cli("dsd", "--data", "synthetic", "--set", "dsd.sparsity=1.5", "--out", tmp_path), "dsd")
    assert_user_error(cli("export", "--compact", tmp_path / "missing.pt", "-o", tmp_path / "x.pt"))
    assert not (tmp_path / "x.pt").exists()


def test_magnitude_pruning_with_counts_removes_exactly_that_many_smallest_weights():
    torch.manual_seed(0)
    model = create_model("convnet-s", (1, 28, 28), 10, width=8, hidden=32)
    counts = {"features.2.weight": 100, "classifier.4.weight": 7}
    pr = magnitude_pruning(model, 0.3, counts=counts)
    assert pruned_counts(pr)["weights"] == counts  # layers not named keep every weight
    w = dict(model.named_parameters())["features.2.weight"].detach().abs()
    keep = pr.keep["features.2.weight"]
    assert w[~keep].max() <= w[keep].min()  # the smallest magnitudes went


def test_channel_norm_pruning_takes_the_smallest_filters_and_matches_unit_counts():
    torch.manual_seed(0)
    model = create_model("convnet-s", (1, 28, 28), 10, width=8, hidden=32)
    units, _ = find_units(model)
    with torch.no_grad():
        model.features[0].weight[3].mul_(1e-3)  # channel 3 of the first layer: by far the smallest filter
        model.features[0].bias[3] = 0.0
    pr = channel_norm_pruning(model, units, counts={"features.1": 1, "classifier.3": 5})
    assert pr.units["features.1"] == [3] and len(pr.units["classifier.3"]) == 5
    assert pruned_counts(pr)["units"] == {"features.1": 1, "classifier.3": 5}
    assert not pr.keep["features.0.weight"][3].any() and not pr.keep["features.2.weight"][:, 3].any()
    # without counts: the fraction of each layer's units, never a whole layer
    frac = channel_norm_pruning(model, units, fraction=0.5)
    assert {k: len(v) for k, v in frac.units.items()} == {u.act: u.channels // 2 for u in units}
    assert all(
        len(v) < u.channels
        for u in units
        for k, v in channel_norm_pruning(model, units, fraction=1.0).units.items()
        if k == u.act
    )


def test_dsd_from_a_given_dense_model_at_matched_sparsity(synthetic, tmp_path):
    from supportnet.train import build

    cfg = _cfg(tmp_path, "dsd.prune=support-b", "dsd.eps=0.2", "dsd.redense_epochs=0")
    _, dense = build(cfg, synthetic)
    start = {k: v.clone() for k, v in dense.state_dict().items()}
    ref = dsd(cfg, tmp_path / "sb", data=synthetic, log=lambda *_: None, start=start)
    assert ref["phases"]["dense"]["epochs"] == 0 and not (tmp_path / "sb" / "dense").exists()  # no dense phase
    counts = ref["pruned_counts"]
    assert counts["units"] and counts["weights"]
    mag = dsd(_cfg(tmp_path, "dsd.prune=magnitude", "dsd.redense_epochs=0"), tmp_path / "m", data=synthetic,
              log=lambda *_: None, start=start, match=counts)  # fmt: skip
    ch = dsd(_cfg(tmp_path, "dsd.prune=channel-l2", "dsd.redense_epochs=0"), tmp_path / "c", data=synthetic,
             log=lambda *_: None, start=start, match=counts)  # fmt: skip
    assert mag["pruned_counts"]["weights"] == counts["weights"] and not mag["pruned_counts"]["units"]
    assert ch["pruned_counts"] == counts  # same units per layer, hence the same weights per tensor
    assert mag["sparsity"]["weights"] == pytest.approx(ref["sparsity"]["weights"])
    assert ch["params"]["compact"] == ref["params"]["compact"] < ref["params"]["dense"]
