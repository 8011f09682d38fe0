import pytest
import torch
import torch.nn.functional as F
from torch import nn

from supportnet import (
    HardThreshold,
    configure,
    conversion_report,
    convert,
    create_model,
    record_masks,
    threshold_layers,
)
from supportnet.errors import ConfigError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(36, 3), nn.Tanh())

    def forward(self, x):
        return self.head(self.body(x))


class FunctionalBlocks(nn.Module):
    """Every functional form of relu, a ReLU module called twice, and in-place forms whose
    input is read again afterwards."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3, self.c4 = (nn.Conv2d(2, 2, 3, padding=1) for _ in range(4))
        self.shared = nn.ReLU()
        self.fc = nn.Linear(2 * 8 * 8, 5)

    def forward(self, x):
        x = F.relu(self.c1(x))
        y = torch.relu(self.c2(x))
        z = self.c3(y).relu()
        w = self.c4(z)
        F.relu(w, inplace=True)  # result discarded: w itself is now relu'd
        v = self.shared(w) + self.shared(-w)  # one module, two sites
        v = v.relu_()
        h = F.max_pool2d(v, 1)
        return self.fc(h.flatten(1))


def test_module_path_swaps_relu_modules_and_reports():
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 1, 12, 12)
    before = net(x).detach()
    rep = conversion_report(convert(net, path="module"))
    assert rep.path == "module"
    assert rep.converted == ["body.1 (nn.ReLU)", "body.4 (nn.ReLU)"]
    assert any("MaxPool2d" in s for s in rep.left_alone) and any("Tanh" in s for s in rep.left_alone)
    assert all(isinstance(net.body[i], HardThreshold) for i in (1, 4))
    assert torch.equal(net(x), before)  # tau = 0: identical outputs
    assert "converted 2 ReLU site(s)" in str(rep)


def test_fx_path_finds_every_functional_form_bit_for_bit():
    torch.manual_seed(0)
    net = FunctionalBlocks()
    x = torch.randn(3, 2, 8, 8)
    before = net(x).detach()
    rep = conversion_report(convert(net))
    assert rep.path == "fx", rep.reason
    forms = " ".join(rep.converted)
    assert len(rep.converted) == 7, rep.converted
    for form in ("functional.relu", "torch.relu", "Tensor.relu()", "Tensor.relu_()", "shared (nn.ReLU)"):
        assert form in forms, (form, forms)
    assert any("max_pool2d" in s for s in rep.left_alone), rep.left_alone
    gm = rep.model
    assert len(threshold_layers(gm)) == 7
    assert not any(isinstance(m, nn.ReLU) for m in gm.modules())
    assert torch.equal(gm(x), before)
    # parameters keep their names: the original state dict loads into the converted model
    gm.load_state_dict(net.state_dict())
    # the two calls of the shared module are two layers with two supports
    masks = record_masks(gm, x)
    assert len(masks) == 7


def test_converted_model_supports_can_be_held_fixed():
    torch.manual_seed(0)
    gm = convert(FunctionalBlocks())
    x = torch.randn(4, 2, 8, 8)
    configure(gm, mode="batch")
    out = gm(x)
    out.sum().backward()
    assert torch.isfinite(out).all()


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.act(self.fc(x))
        return self.act(-self.fc(x))


def test_untraceable_model_falls_back_to_module_swap():
    rep = conversion_report(convert(Untraceable()))
    assert rep.path == "module" and "fx could not trace" in rep.reason
    assert rep.converted == ["act (nn.ReLU)"]
    with pytest.raises(ConfigError, match="torch.fx cannot trace"):
        convert(Untraceable(), path="fx")


@pytest.mark.parametrize(
    "name,shape,sites",
    [
        ("resnet18", (3, 32, 32), 17),
        ("vgg16", (3, 32, 32), 15),
        ("googlenet", (3, 32, 32), 55),
        ("resnet18", (3, 224, 224), 17),
        ("googlenet", (3, 224, 224), 57),
        ("allcnn-c", (3, 32, 32), 9),
        ("convnet-s", (1, 28, 28), 4),
    ],
)
def test_zoo_models_with_relu_convert_bit_for_bit(name, shape, sites):
    torch.manual_seed(0)
    ref = create_model(name, shape, 10, act_layer=nn.ReLU).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        before = ref(x)
        rep = conversion_report(convert(ref))
        assert len(rep.converted) == sites
        assert (rep.path == "module") == (type(rep.model) is type(ref)) == (not rep.class_changed)
        assert sites == len(threshold_layers(create_model(name, shape, 10)))  # as many as the native model
        assert torch.equal(rep.model(x), before)


def test_vgg16_224_converts():  # separate: 138M parameters
    torch.manual_seed(0)
    ref = create_model("vgg16", (3, 224, 224), 1000, act_layer=nn.ReLU).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = ref(x)
        rep = conversion_report(convert(ref))
        assert len(rep.converted) == 15 and torch.equal(rep.model(x), before)


def _torchvision():
    try:
        import torchvision.models as tvm  # optional; never required

        return tvm
    except Exception:  # noqa: BLE001 - absent, or a build that does not import beside this torch
        return None


@pytest.mark.skipif(_torchvision() is None, reason="torchvision is not installed (optional)")
@pytest.mark.parametrize("name,sites,params", [("resnet18", 17, 11_689_512), ("vgg16", 15, 138_357_544)])
def test_against_torchvision(name, sites, params):
    tvm = _torchvision()
    ref = getattr(tvm, name)(weights=None).eval()
    ours = create_model(name, (3, 224, 224), 1000)
    assert sum(p.numel() for p in ref.parameters()) == params == sum(p.numel() for p in ours.parameters())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = ref(x)
        rep = conversion_report(convert(ref))
        assert len(rep.converted) == sites == len(threshold_layers(ours))
        assert torch.equal(rep.model(x), before)


@pytest.mark.parametrize("path", ["fx", "module"])
def test_tau_in_state_dict_round_trips_a_positive_threshold(tmp_path, path):
    """``tau_in_state_dict=True``: ``torch.save(model.state_dict())`` of a tau > 0 model loads
    back with its thresholds, by itself; a strict load without them is an error."""
    torch.manual_seed(0)
    model = convert(Net(), tau=0.25, path=path, tau_in_state_dict=True)
    configure(model, tau=[0.25, 0.5])
    torch.save(model.state_dict(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert sorted(k for k in state if k.endswith(".tau")) == ["body.1.tau", "body.4.tau"]
    fresh = convert(Net(), path=path, tau_in_state_dict=True)  # tau = 0
    fresh.load_state_dict(state)
    assert [lay.tau for _, lay in threshold_layers(fresh)] == [0.25, 0.5]
    x = torch.randn(2, 1, 12, 12)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(RuntimeError, match="Missing key.*tau"):
        fresh.load_state_dict(Net().state_dict())  # the ReLU model's weights: no thresholds
    fresh.load_state_dict(Net().state_dict(), strict=False)
    with pytest.raises(RuntimeError, match="Unexpected key.*tau"):
        Net().load_state_dict(state)


@pytest.mark.parametrize("path", ["fx", "module"])
def test_by_default_the_state_dict_is_the_relu_models(path):
    torch.manual_seed(0)
    model = convert(Net(), tau=0.25, path=path)
    assert not any(k.endswith("tau") for k in model.state_dict())
    Net().load_state_dict(model.state_dict())  # strictly, into the ReLU model
    model.load_state_dict(Net().state_dict())  # and back


class WithMethods(nn.Module):
    """A model with methods of its own (timm's forward_features / reset_classifier) and only
    module ReLUs, each called once: converted in place, the class kept."""

    pretrained_cfg = {"url": ""}

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.head = nn.Linear(4 * 8 * 8, 3)
        self.unused = nn.ReLU()  # never called: not a site

    def forward_features(self, x):
        return self.stem(x).flatten(1)

    def reset_classifier(self, n):
        self.head = nn.Linear(self.head.in_features, n)

    def forward(self, x):
        return self.head(self.forward_features(x))


def test_module_sites_are_swapped_in_place_and_the_class_kept():
    torch.manual_seed(0)
    net = WithMethods()
    x = torch.randn(2, 1, 12, 12)
    before = net(x).detach()
    model = convert(net)
    rep = conversion_report(model)
    assert model is net and type(model) is WithMethods and rep.path == "module" and not rep.class_changed
    assert rep.converted == ["stem.1 (nn.ReLU)", "stem.3 (nn.ReLU)"] and type(model.unused) is nn.ReLU
    assert torch.equal(model(x), before) and model.forward_features(x).shape == (2, 256)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.pretrained_cfg == {"url": ""}
    assert "class changed" not in str(rep)


def test_where_fx_is_needed_the_report_says_the_class_changed():
    rep = conversion_report(convert(FunctionalBlocks()))
    assert rep.path == "fx" and rep.class_changed == [""]
    assert "now a torch.fx.GraphModule (the class changed" in str(rep) and "the model" in str(rep)


class Shared(nn.Module):
    """One in-place ReLU module whose input is read again: module swap would change the output."""

    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(4, 4), nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        return self.act(h) + h  # h is relu'd in place: fx handles it


def test_an_in_place_relu_whose_input_is_read_again_takes_fx():
    torch.manual_seed(0)
    net, x = Shared(), torch.randn(3, 4)
    before = net(x).detach()
    rep = conversion_report(convert(net))
    assert rep.path == "fx" and torch.equal(rep.model(x), before)


class Block(nn.Module):
    """fx traces it; it calls F.relu."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x))


class HalfRelu(nn.Module):
    """fx cannot trace it (a channel split computed with int()); it calls F.relu: a site left."""

    def __init__(self, c, ratio=0.5):
        super().__init__()
        self.ratio, self.conv, self.act = ratio, nn.Conv2d(c // 2, c // 2, 1), nn.ReLU()

    def forward(self, x):
        k = int(x.size(1) * self.ratio)
        return torch.cat([F.relu(self.conv(x[:, :k])), self.act(x[:, k:])], 1)


class SplitNet(nn.Module):
    """Its whole forward fx cannot trace (int(x.size(1) * ratio)); its blocks it can."""

    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.blocks = nn.ModuleList([Block(c), Block(c)])
        self.mix = HalfRelu(c)
        self.act = nn.ReLU()
        self.fc = nn.Linear(c * 6 * 6, 3)

    def features(self, x):
        x = self.stem(x)
        k = int(x.size(1) * 0.5)
        x = torch.cat([self.blocks[0](x[:, :k].repeat(1, 2, 1, 1))[:, :k], x[:, k:]], 1)
        return self.act(self.mix(self.blocks[1](x)))

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def test_an_untraceable_model_is_converted_child_by_child():
    torch.manual_seed(0)
    net = SplitNet()
    x = torch.randn(2, 1, 6, 6)
    before = net(x).detach()
    model = convert(net)
    rep = conversion_report(model)
    assert model is net and type(model) is SplitNet and "fx could not trace the model" in rep.reason
    forms = " ".join(rep.converted)
    assert "blocks.0." in forms and "blocks.1." in forms and "functional.relu" in forms, rep.converted
    assert "act (nn.ReLU)" in rep.converted and "mix.act (nn.ReLU)" in rep.converted
    assert rep.class_changed == ["blocks.0", "blocks.1"] and rep.left == ["mix"], (rep.class_changed, rep.left)
    assert len(threshold_layers(model)) == 4
    assert torch.equal(model(x), before) and model.features(x).shape == (2, 4, 6, 6)
    configure(model, mode="batch")
    model(x).sum().backward()
    assert "relu sites left" in str(rep) and "mix" in str(rep)
