"""Models that leave as plain PyTorch (docs/export.md): final.pt, model.safetensors,
``supportnet export`` in four formats, ``supportnet.load_model``, and the meta-device counts."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, run_cli
from torch import nn

import supportnet
from supportnet.checkpoint import content_digest, load_checkpoint, read_checkpoint, save_checkpoint
from supportnet.config import load_config
from supportnet.errors import IntegrityError
from supportnet.export import export_model, plain_copy, read_model, read_safetensors
from supportnet.layers import HardThreshold, configure, threshold_layers
from supportnet.models import count_params, create_model, param_count
from supportnet.train import fit

TAUS = [0.0, 0.05, 0.1, 0.0]  # per threshold layer of convnet-s: plain ReLU and Eq. 9 with tau > 0
KW = {"width": 8, "hidden": 32}


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(
        None,
        [
            "data.name=synthetic",
            "train.epochs=1",
            "model.kwargs={width: 8, hidden: 32}",
            f"support.tau={json.dumps(TAUS)}",
            "train.train_eval_size=0",
            f"out={out}",
            "quiet=true",
        ],
    )
    return fit(cfg, data=synthetic)


def _reference(run, synthetic):
    """The trained model, rebuilt by hand from final.pt as a plain-PyTorch user would."""
    ck = torch.load(run / "final.pt", weights_only=True)
    model = create_model("convnet-s", synthetic.in_shape, synthetic.num_classes, **KW)
    model.load_state_dict(ck["state_dict"])
    configure(model, tau=TAUS)
    return model.eval()


def test_final_pt_is_one_plain_dict(run, synthetic):
    ck = torch.load(run / "final.pt", weights_only=True)  # one step, no second serialisation
    assert {"state_dict", "config", "metrics", "taus", "arch"} <= set(ck)
    assert all(isinstance(v, torch.Tensor) for v in ck["state_dict"].values())
    relu = create_model("convnet-s", synthetic.in_shape, synthetic.num_classes, act_layer=nn.ReLU, **KW)
    relu.load_state_dict(ck["state_dict"], strict=True)  # the original plain-ReLU model
    assert ck["taus"] == dict(zip(["features.1", "features.3", "features.5", "classifier.3"], TAUS))
    assert ck["arch"] == {"name": "convnet-s", "in_shape": list(synthetic.in_shape), "num_classes": 10, "kwargs": KW}
    assert ck["supportnet"]["kind"] == "final" and len(ck["supportnet"]["sha256"]) == 64


def test_safetensors_beside_final(run):
    from safetensors import safe_open
    from safetensors.torch import load_file

    ck = torch.load(run / "final.pt", weights_only=True)
    tensors = load_file(str(run / "model.safetensors"))
    assert tensors.keys() == ck["state_dict"].keys()
    assert all(torch.equal(tensors[k], ck["state_dict"][k]) for k in tensors)
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert len(meta["sha256"]) == 64 and json.loads(meta["supportnet"])["taus"] == ck["taus"]
    _, info = read_safetensors(run / "model.safetensors")
    assert info["arch"] == ck["arch"]


def test_safetensors_checksum_catches_a_flipped_weight(run, tmp_path):
    raw = bytearray((run / "model.safetensors").read_bytes())
    raw[-5] ^= 0x01  # inside the last tensor's bytes
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="checksum"):
        read_safetensors(bad)


def test_safetensors_is_written_by_the_library_atomically(tmp_path, monkeypatch):
    """``write_safetensors`` hands the tensors and the metadata to ``safetensors.torch.save_file``,
    writes a temporary file beside the target, and keeps the old file when the write fails."""
    import safetensors.torch as st

    from supportnet.artifacts import write_safetensors

    calls = []
    real = st.save_file

    def spy(tensors, filename, metadata=None):
        calls.append((sorted(tensors), Path(filename), dict(metadata or {})))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", spy)
    w = torch.randn(3, 4)
    tensors = {"a.weight": w, "b.weight": w, "c.t": torch.arange(6).view(2, 3).t()}  # tied, non-contiguous
    out = tmp_path / "m.safetensors"
    write_safetensors(out, tensors, {"arch": {"name": "x"}})
    ((names, where, meta),) = calls
    assert names == sorted(tensors) and where.parent == tmp_path and where != out and not where.exists()
    assert meta["format"] == "supportnet-safetensors-1" and len(meta["sha256"]) == 64
    back, info = read_safetensors(out)
    assert info == {"arch": {"name": "x"}} and all(torch.equal(back[k], tensors[k]) for k in tensors)

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "save_file", broken)
    with pytest.raises(supportnet.SupportnetError, match="free some disk space"):
        write_safetensors(out, {"w": torch.zeros(2)}, {})
    assert read_safetensors(out)[1] == {"arch": {"name": "x"}}  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary left


def test_content_digest_sees_every_value():
    base = {"state_dict": {"w": torch.arange(4.0)}, "metrics": [{"acc": 0.5}], "config": {"a": None}}
    d0 = content_digest(base, "final")
    variants = [
        {**base, "state_dict": {"w": torch.tensor([0.0, 1.0, 2.0, 3.5])}},  # a weight
        {**base, "state_dict": {"v": torch.arange(4.0)}},  # a name
        {**base, "state_dict": {"w": torch.arange(4.0).double()}},  # a dtype
        {**base, "state_dict": {"w": torch.arange(4.0).view(2, 2)}},  # a shape
        {**base, "metrics": [{"acc": 0.5000001}]},  # a number
        {**base, "metrics": ({"acc": 0.5},)},  # a list read back as a tuple
        {**base, "config": {"a": 0}},  # None against 0
    ]
    assert all(content_digest(v, "final") != d0 for v in variants)
    assert content_digest(base, "resume") != d0  # the kind is covered too
    assert content_digest(dict(base), "final") == d0


def test_checkpoint_round_trip_and_kind(tmp_path):
    p = tmp_path / "c.pt"
    payload = {"state_dict": {"w": torch.randn(3, 2)}, "config": {}, "metrics": [], "taus": {}, "arch": {}}
    save_checkpoint(p, payload, kind="final")
    back, kind, fmt = read_checkpoint(p)
    assert (kind, fmt) == ("final", 2) and torch.equal(back["state_dict"]["w"], payload["state_dict"]["w"])
    with pytest.raises(IntegrityError, match="is a final model, not a resume checkpoint"):
        load_checkpoint(p, kind="resume")


def test_format_1_checkpoints_still_load(tmp_path):
    import hashlib
    import io

    inner = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2)}, "config": {}, "metrics": []}, inner)
    body = inner.getvalue()
    wrapper = {
        "format": 1,
        "sha256": hashlib.sha256(body).hexdigest(),
        "body": torch.frombuffer(bytearray(body), dtype=torch.uint8),
    }
    torch.save(wrapper, tmp_path / "old.pt")
    ck = load_checkpoint(tmp_path / "old.pt", kind="final")
    assert torch.equal(ck["state_dict"]["w"], torch.ones(2))


def test_load_model_final_run_and_safetensors(run, synthetic):
    ref = _reference(run, synthetic)
    x = synthetic.test.x[:32]
    for src in (run, run / "final.pt", run / "model.safetensors"):
        model = supportnet.load_model(src)
        assert not model.training
        assert [lay.tau for _, lay in threshold_layers(model)] == TAUS  # tau restored
        assert [lay.mode for _, lay in threshold_layers(model)] == ["free"] * 4
        with torch.no_grad():
            assert torch.equal(model(x), ref(x)), src


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors"])
def test_export_and_load_back(run, synthetic, tmp_path, fmt):
    out = tmp_path / f"m.{fmt}"
    info = export_model(run, fmt, out)
    assert info["params"] == count_params(_reference(run, synthetic))
    model = supportnet.load_model(out)
    x = synthetic.test.x[:16]
    with torch.no_grad():
        assert torch.equal(model(x), _reference(run, synthetic)(x))
    if fmt == "state_dict":  # a plain dict too
        ck = torch.load(out, weights_only=True)
        assert ck["taus"] == torch.load(run / "final.pt", weights_only=True)["taus"]


def test_plain_copy_is_relu_where_tau_is_zero(run, synthetic):
    ref = _reference(run, synthetic)
    plain = plain_copy(ref)
    acts = [m for m in plain.modules() if isinstance(m, (nn.ReLU, nn.Threshold, HardThreshold))]
    assert [type(m) for m in acts] == [nn.ReLU, nn.Threshold, nn.Threshold, nn.ReLU]
    assert [m.threshold for m in acts if isinstance(m, nn.Threshold)] == TAUS[1:3]
    x = synthetic.test.x[:16]
    with torch.no_grad():
        assert torch.equal(plain(x), ref(x))
        ref_relu = _reference(run, synthetic)
        configure(ref_relu, tau=0.0)
        assert not torch.equal(plain(x), ref_relu(x))  # the taus matter for this model


# A child that cannot import supportnet: -I ignores PYTHONPATH and the user's site folder, and
# the editable install's entry is shadowed by a None in sys.modules (ImportError on import).
_ISOLATED = textwrap.dedent(
    """
    import sys
    sys.modules["supportnet"] = None
    try:
        import supportnet  # noqa
        raise SystemExit("supportnet is importable")
    except ImportError:
        pass
    import numpy as np, torch
    x = torch.load(sys.argv[3], weights_only=True)
    if sys.argv[1] == "torchscript":
        m = torch.jit.load(sys.argv[2])
        y = m(x).detach().numpy()
        print("GRAPH", "aten::relu" in str(m.inlined_graph), "aten::threshold" in str(m.inlined_graph))
    else:
        import onnx, onnxruntime as ort
        s = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
        y = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
        ops = {n.op_type for n in onnx.load(sys.argv[2]).graph.node}
        print("GRAPH", "Relu" in ops, bool(ops & {"Where", "LessOrEqual", "Greater"}))
    print("MODULES", any(k.startswith("supportnet") and sys.modules[k] is not None for k in sys.modules))
    np.save(sys.argv[4], y)
    """
)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_runs_without_supportnet(run, synthetic, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"model.{fmt}"
    p = run_cli("export", run, "--format", fmt, "-o", out, env={"PYTHONWARNINGS": "default"})
    assert p.returncode == 0, p.stderr
    assert "written" in p.stdout and p.stderr == ""  # no exporter chatter, no warnings
    x = synthetic.test.x[:13]  # another batch size than the export's example: the batch is dynamic
    torch.save(x, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    child = subprocess.run(
        [sys.executable, "-I", "-c", _ISOLATED, fmt, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "GRAPH True True" in child.stdout  # ReLU where tau == 0, a threshold where tau > 0
    assert "MODULES False" in child.stdout
    import numpy as np

    y = torch.from_numpy(np.load(tmp_path / "y.npy"))
    with torch.no_grad():
        ref = _reference(run, synthetic)(x)
    assert (y - ref).abs().max().item() <= 1e-5


def _sparse_checkpoint(tmp_path, synthetic):
    """A DSD sparse.pt by hand: channels 1 and 3 of features.1 pruned (weights held at zero)."""
    from supportnet.dsd import Enforcer, find_units, unit_pruning
    from supportnet.export import arch_of, plain_state_dict, taus_of

    torch.manual_seed(0)
    model = create_model("convnet-s", synthetic.in_shape, 10, **KW)
    configure(model, tau=TAUS)
    units, _ = find_units(model)
    census = {u.act: (torch.full((u.channels,), 50), 100) for u in units}
    census["features.1"][0][[1, 3]] = 0
    pruning = unit_pruning(model, units, census, eps=0.1)
    enforce = Enforcer(pruning)
    enforce(model, torch.optim.SGD(model.parameters(), lr=0.1))  # the pruned weights at zero
    enforce.release()
    cfg = load_config(None, ["data.name=synthetic", "model.kwargs={width: 8, hidden: 32}"])
    sparse = tmp_path / "sparse.pt"
    save_checkpoint(
        sparse,
        {
            "state_dict": plain_state_dict(model),
            "config": cfg.to_dict(),
            "keep": pruning.keep,
            "units": pruning.units,
            "arch": arch_of(cfg, synthetic.in_shape, 10),
            "taus": taus_of(model),
        },
        kind="sparse",
    )
    return sparse, model.eval()


def test_compact_export_loads_back(tmp_path, synthetic, cli):
    sparse, masked = _sparse_checkpoint(tmp_path, synthetic)
    p = cli("export", "--compact", sparse, "-o", tmp_path / "compact.pt")
    assert p.returncode == 0, p.stderr
    model = supportnet.load_model(tmp_path / "compact.pt")
    assert model.features[0].out_channels == 6 and model.features[2].in_channels == 6
    assert count_params(model) < count_params(masked)
    x = synthetic.test.x[:16]
    with torch.no_grad():
        assert (model(x) - masked(x)).abs().max().item() <= 1e-5
    assert read_model(tmp_path / "compact.pt").units == {"features.1": [1, 3]}
    export_model(sparse, "safetensors", tmp_path / "compact.safetensors", compact=True)
    again = supportnet.load_model(tmp_path / "compact.safetensors")
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_compact_export_to_onnx(tmp_path, synthetic):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    sparse, masked = _sparse_checkpoint(tmp_path, synthetic)
    info = export_model(sparse, "onnx", tmp_path / "c.onnx", compact=True)
    assert info["params_after"] < info["params_before"] and info["max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("name", ["mlp", "convnet-s", "allcnn-a", "nin-mnist", "nin"])
def test_meta_param_counts_equal_a_real_build(name):
    from supportnet.models import default_input

    shape = default_input(name)
    assert param_count(name, in_shape=shape, num_classes=10) == count_params(create_model(name, shape, 10))
    assert torch.nn.init.normal_(torch.ones(3)).ne(1).any()  # the initialisers are restored afterwards


def test_models_command_lists_counts(cli):
    p = cli("models")
    assert p.returncode == 0, p.stderr
    row = next(line for line in p.stdout.splitlines() if line.startswith("convnet-s"))
    assert f"{count_params(create_model('convnet-s')):,}" in row


def test_format_1_compact_export_loads_back(tmp_path, synthetic):
    """A compact export written before arch and taus were recorded (format 1): the data set
    gives the input shape, the config the taus."""
    import hashlib
    import io

    from supportnet.dsd import Pruning, compact, find_units

    sparse, masked = _sparse_checkpoint(tmp_path, synthetic)
    ck = load_checkpoint(sparse, kind="sparse")
    small = compact(masked, find_units(masked)[0], Pruning(units=ck["units"]))
    cfg = dict(ck["config"], support=dict(ck["config"]["support"], tau=TAUS))
    inner = io.BytesIO()
    torch.save(
        {
            "state_dict": small.state_dict(),
            "shapes": {n: list(p.shape) for n, p in small.state_dict().items()},
            "config": cfg,
            "units": ck["units"],
            "format": "supportnet-compact-1",
        },
        inner,
    )
    body = inner.getvalue()
    old = {"format": 1, "sha256": hashlib.sha256(body).hexdigest()}
    old["body"] = torch.frombuffer(bytearray(body), dtype=torch.uint8)
    torch.save(old, tmp_path / "old-compact.pt")
    model = supportnet.load_model(tmp_path / "old-compact.pt")
    assert [lay.tau for _, lay in threshold_layers(model)] == TAUS
    x = synthetic.test.x[:8]
    with torch.no_grad():
        assert torch.equal(model(x), small.eval()(x))


class MyNet(nn.Module):
    """A user's own model, with a method of its own."""

    def __init__(self, side=16):  # the synthetic data's 1x16x16
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * side * side, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def user_run(tmp_path_factory, synthetic):
    out = tmp_path_factory.mktemp("user")
    cfg = load_config(None, ["data.name=synthetic", "train.epochs=1", "train.train_eval_size=0",
                             "support.tau=0.05", f"out={out}", "quiet=true"])  # fmt: skip
    torch.manual_seed(0)
    model = supportnet.convert(MyNet())
    return fit(cfg, data=synthetic, model=model), model


def test_a_users_model_round_trips_into_a_skeleton(user_run, synthetic):
    """``fit(cfg, model=my_model)``: the run records that the model is the user's; ``load_model``
    loads into a skeleton the user supplies, with its taus, in free mode."""
    run, trained = user_run
    ck = torch.load(run / "final.pt", weights_only=True)
    assert ck["arch"]["user_model"].endswith("GraphModuleImpl") or "MyNet" in ck["arch"]["user_model"]
    assert read_safetensors(run / "model.safetensors")[1]["arch"]["user_model"] == ck["arch"]["user_model"]
    x = synthetic.test.x[:8]
    for src in (run, run / "final.pt", run / "model.safetensors"):
        skeleton = supportnet.convert(MyNet())
        got = supportnet.load_model(src, model=skeleton)
        assert got is skeleton and not got.training
        assert [lay.tau for _, lay in threshold_layers(got)] == [0.05]
        with torch.no_grad():
            assert torch.equal(got(x), trained.eval()(x))


def test_a_users_model_without_a_skeleton_is_a_one_line_error(user_run, cli):
    run, _ = user_run
    with pytest.raises(supportnet.ConfigError, match=r"your own model .*load_model\(path, model="):
        supportnet.load_model(run)
    with pytest.raises(supportnet.ConfigError, match="does not fit the ConvNetS passed as model"):
        supportnet.load_model(run, model=create_model("convnet-s", (1, 16, 16), 10))
    with pytest.raises(supportnet.ConfigError, match="pass it converted"):
        supportnet.load_model(run, model=MyNet())  # not converted: no threshold layers
    assert_user_error(cli("export", run, "--format", "state_dict", "--output", run / "x.pt"), "your own model")
