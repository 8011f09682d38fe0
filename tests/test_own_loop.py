"""The schedules in a user's own loop (docs/own-loop.md) and ``fit`` on any map-style Dataset.

The own loop below is the documented one: ``alt.start_epoch``, ``with alt.step(idx, x)``,
``loss + alt.penalty()``, ``alt.end_epoch``. On the same seed and data order it must give the
same final weights as ``fit()``, bit for bit, for every method and back end.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import supportnet as sn
from supportnet.checkpoint import load_checkpoint
from supportnet.config import load_config
from supportnet.data import batches, epoch_order
from supportnet.errors import ConfigError, DataError
from supportnet.layers import layer_mode, threshold_layers
from supportnet.models import create_model
from supportnet.train import build, seed_everything

METHODS = {
    "sgd": {},
    "b-alt": {"warmup": 1},
    "i-alt-stored": {"warmup": 1, "backend": "stored"},
    "i-alt-snapshot": {"warmup": 1, "backend": "snapshot"},
    "i-alt-stored-linear": {"warmup": 1, "backend": "stored", "apply": "linear", "lr_scale": 0.5},
}
EPOCHS, LR = 3, 0.05


def _cfg(tmp_path, method, support):
    sets = [f"support.{k}={v}" for k, v in support.items()]
    return load_config(
        None,
        [
            "data.name=synthetic",
            f"train.epochs={EPOCHS}",
            f"train.lr={LR}",
            "train.schedule=constant",
            "model.kwargs={width: 8, hidden: 32}",
            f"support.method={method.split('-stored')[0].split('-snapshot')[0]}",
            f"out={tmp_path}",
            "quiet=true",
            *sets,
        ],
    )


def own_loop(cfg, data, method: str, support: dict) -> dict:
    """The loop of docs/own-loop.md, with fit()'s seed, initial weights and data order."""
    _, model = build(cfg, data)  # the same initial weights as fit() (seeded)
    seed_everything(cfg.train.seed)
    t = cfg.train
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    alt = sn.alternation(cfg.support.method, model, data.train, **support)
    for epoch in range(EPOCHS):
        alt.start_epoch(epoch)
        for g in opt.param_groups:
            g["lr"] = t.lr * alt.lr_factor
        model.train()
        total, n = torch.zeros((), dtype=torch.float64), 0
        for x, y, idx in batches(data.train, t.batch_size, epoch_order(len(data.train), t.seed, epoch)):
            with alt.step(idx, x):
                ce = F.cross_entropy(model(x), y)
                loss = ce + alt.penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += ce.detach().double() * y.numel()
            n += y.numel()
        alt.end_epoch((total / n).item())
    return model.state_dict()


@pytest.mark.parametrize("method", list(METHODS))
def test_own_loop_gives_fit_weights_bit_for_bit(synthetic, tmp_path, method):
    support = METHODS[method]
    cfg = _cfg(tmp_path / "fit", method, support)
    run = sn.fit(cfg, data=synthetic)
    want = load_checkpoint(run / "final.pt")["state_dict"]
    got = own_loop(cfg, synthetic, method, support)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


class Pairs(Dataset):
    """A user's map-style data set: ``(x, y)`` pairs, nothing supportnet-specific."""

    def __init__(self, x, y, noise: float = 0.0):
        self.x, self.y, self.noise = x, y, noise

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.noise:  # a random transform: a new view on every read
            x = x + self.noise * torch.randn_like(x)
        return x, int(self.y[i])


@pytest.mark.parametrize("method", ["sgd", "i-alt-stored"])
def test_fit_on_a_dataset_matches_fit_on_tensors(synthetic, tmp_path, method):
    support = METHODS[method]
    a = sn.fit(_cfg(tmp_path / "a", method, support), data=synthetic)
    b = sn.fit(
        _cfg(tmp_path / "b", method, support),
        train=Pairs(synthetic.train.x, synthetic.train.y),
        test=Pairs(synthetic.test.x, synthetic.test.y),
    )
    wa, wb = load_checkpoint(a / "final.pt")["state_dict"], load_checkpoint(b / "final.pt")["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_random_transforms_refuse_stored_supports_and_name_snapshot(synthetic, tmp_path):
    noisy = Pairs(synthetic.train.x, synthetic.train.y, noise=0.1)
    test = Pairs(synthetic.test.x, synthetic.test.y)
    cfg = _cfg(tmp_path / "s", "i-alt-stored", METHODS["i-alt-stored"])
    with pytest.raises(ConfigError, match="snapshot"):
        sn.fit(cfg, train=noisy, test=test)
    rng = torch.get_rng_state()
    cfg = _cfg(tmp_path / "n", "i-alt-snapshot", METHODS["i-alt-snapshot"])
    cfg.train.epochs = 2
    run = sn.fit(cfg, train=noisy, test=test)  # the snapshot back end recomputes each view's support
    assert (run / "final.pt").is_file()
    assert not torch.equal(rng, torch.get_rng_state())  # it really drew random views


def test_with_indices_gives_index_batches(synthetic):
    ds = Pairs(synthetic.train.x[:10], synthetic.train.y[:10])
    loader = torch.utils.data.DataLoader(sn.with_indices(ds), batch_size=4, shuffle=False)
    x, y, idx = next(iter(loader))
    assert idx.tolist() == [0, 1, 2, 3] and torch.equal(x, synthetic.train.x[:4])


def test_alternation_hooks_need_what_their_back_end_reads(synthetic):
    _, model = build(_cfg("unused", "i-alt", {}), synthetic)
    alt = sn.alternation("i-alt", model, synthetic.train, backend="stored", warmup=0)
    ev = alt.start_epoch(0)
    assert ev.phase == "i-alt" and ev.reestimated and ev.round == 1
    with pytest.raises(ConfigError, match="indices"):
        alt.before_step(synthetic.train.x[:4], None)
    with pytest.raises(ConfigError, match="unknown"):
        sn.alternation("i-alt", model, synthetic.train, bakend="stored")
    with pytest.raises(ConfigError, match="train"):
        sn.alternation("i-alt", model)


def test_plain_model_is_refused_by_configure_and_record_masks():
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with pytest.raises(ConfigError, match="convert"):
        sn.configure(plain, mode="batch")
    with pytest.raises(ConfigError, match="convert"):
        sn.record_masks(plain, torch.randn(2, 4))
    with pytest.raises(ConfigError, match="convert"):
        sn.alternation("b-alt", plain)
    converted = sn.convert(plain)
    assert len(sn.record_masks(converted, torch.randn(2, 4))) == 1


def test_dataset_items_must_be_tensor_pairs():
    class Bad(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return [1, 2, 3], 0

    with pytest.raises(DataError, match="ToTensor"):
        sn.from_datasets(Bad(), Bad())


def _free_out(model, x):
    with torch.no_grad(), layer_mode(model, "free"):
        return model(x)


@pytest.mark.parametrize("method", ["sgd", "b-alt", "i-alt-stored", "i-alt-snapshot"])
def test_validation_mid_epoch_under_model_eval_is_free_mode(synthetic, method):
    """``model.eval()`` inside an alternation epoch, between steps and inside a step's block:
    the outputs are the free network's (not supports from the validation batch itself, nor the
    last training batch's); ``model.train()`` trains under the supports again."""
    torch.manual_seed(0)
    model = create_model("convnet-s", in_shape=synthetic.in_shape, num_classes=10, width=8, hidden=32)
    support = METHODS.get(method, {})
    alt = sn.alternation(method.split("-stored")[0].split("-snapshot")[0], model, synthetic.train, **support)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    val = synthetic.test.x[:50]  # a batch size the training batches do not have
    for epoch in range(2):
        alt.start_epoch(epoch)
        for i, (x, y, idx) in enumerate(batches(synthetic.train, 64, epoch_order(len(synthetic.train), 0, epoch))):
            model.train()
            with alt.step(idx, x):
                loss = F.cross_entropy(model(x), y) + alt.penalty()
                if i == 1:  # validation inside the block
                    model.eval()
                    with torch.no_grad():
                        assert torch.equal(model(val), _free_out(model, val))
                    model.train()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i == 2:  # validation between steps
                model.eval()
                with torch.no_grad():
                    out = model(val)
                assert torch.equal(out, _free_out(model, val))
            if i == 3:
                break
    layers = threshold_layers(model)
    want = {"sgd": "free", "b-alt": "batch"}.get(method, "instance")
    assert all(lay.mode == want for _, lay in layers)


@pytest.mark.parametrize("method", ["b-alt", "i-alt-stored"])
def test_step_restores_the_layers_on_exit_errors_included(synthetic, method):
    torch.manual_seed(0)
    model = create_model("convnet-s", in_shape=synthetic.in_shape, num_classes=10, width=8, hidden=32)
    support = {**METHODS[method], "warmup": 0}
    if method == "b-alt":
        support["sync"] = "global"  # the probe hands the layers a given batch support
    alt = sn.alternation(method.split("-stored")[0], model, synthetic.train, **support)
    alt.start_epoch(0)
    layers = [lay for _, lay in threshold_layers(model)]
    before = [(lay.mode, lay.instance_mask, lay.given_batch_mask) for lay in layers]
    x, _, idx = next(iter(batches(synthetic.train, 32, epoch_order(len(synthetic.train), 0, 0))))
    with pytest.raises(ValueError, match="boom"), alt.step(idx, x):
        assert any(lay.instance_mask is not None or lay.given_batch_mask is not None for lay in layers)
        raise ValueError("boom")
    after = [(lay.mode, lay.instance_mask, lay.given_batch_mask) for lay in layers]
    assert all(a[0] == b[0] and a[1] is b[1] and a[2] is b[2] for a, b in zip(before, after))
