import pytest
import torch

from supportnet import configure, count_params, create_model, list_models, record_masks, threshold_layers
from supportnet.layers import set_instance_masks
from supportnet.models import default_input

MODES = ["free", "instance", "batch", "binary", "record"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_mode(name, mode):
    torch.manual_seed(0)
    shape = default_input(name)
    if shape[1] > 64:  # ImageNet-size nets: their small form has the same sites (224 is in test_convert)
        shape = (3, 32, 32)
    model = create_model(name, in_shape=shape, num_classes=7)
    assert threshold_layers(model), "every model uses HardThreshold"
    x = torch.randn(3, *shape)
    if mode == "instance":
        set_instance_masks(model, record_masks(model.eval(), x))
    else:
        configure(model, mode=mode)
    model.train()
    out = model(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n


def test_paper_parameter_counts():
    """Table 2 of the paper: 1.28M, 1.35M, 1.40M (docs/models.md explains ALL-CNN-B's gap)."""
    counts = {n: count_params(create_model(n, (3, 32, 32), 10)) for n in ("allcnn-a", "allcnn-b", "allcnn-c")}
    assert counts == {"allcnn-a": 1_254_250, "allcnn-b": 1_300_618, "allcnn-c": 1_369_738}
    assert abs(counts["allcnn-a"] / 1.28e6 - 1) < 0.03 and abs(counts["allcnn-c"] / 1.40e6 - 1) < 0.03


def test_allcnn_c_output_map_is_6x6_before_pooling():
    m = create_model("allcnn-c", (3, 32, 32), 10)
    feats = m.net[:-2](torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 10, 6, 6)  # Springenberg: global averaging over 6x6


def test_unknown_model_is_config_error():
    with pytest.raises(Exception, match="unknown model"):
        create_model("resnet-9000")


def test_the_listed_table_is_the_registrys():
    """`supportnet models` prints supportnet.model_table.TABLE without importing torch; it must
    equal what the registry computes (after a model change: python -m supportnet.model_table --write)."""
    from supportnet.model_table import TABLE, live_table

    assert TABLE == live_table()


def test_cheap_commands_do_not_import_torch():
    """`import supportnet`, `supportnet models`, `--version` and the parser leave torch unimported
    (importing it costs 1-2 s); the public names still resolve on first use."""
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "import supportnet\n"
        "from supportnet.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    main(['models'])\n"
        "assert 'vgg16' in out.getvalue()\n"
        "print('torch' in sys.modules)\n"
        "print(supportnet.alternation.__name__, supportnet.convert.__name__, type(supportnet.HardThreshold).__name__)\n"
        "import supportnet.alternation, supportnet.convert\n"
        "print(callable(supportnet.alternation), callable(supportnet.convert))\n"
        "print(supportnet.data.__name__, supportnet.theory.planted.__name__, hasattr(supportnet, 'nope'))\n"
        "print(hasattr(supportnet, 'lightning'), hasattr(supportnet, 'foo.bar'), 'layers' in dir(supportnet))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False"
    assert out[1] == "alternation convert type"
    assert out[2] == "True True"
    assert out[3] == "supportnet.data supportnet.theory.planted False"  # submodules as attributes, as before
    assert out[4] == "False False True"  # hasattr never raises; dir() lists the submodules


def test_model_table_writer_refuses_unknown_arguments():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "supportnet.model_table", "--writ"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--write" in out.stderr
