import pytest
import torch

from supportnet.config import Config, apply_override, from_dict, load_config
from supportnet.errors import ConfigError


def test_defaults_train_convnet_s_on_fashion_mnist():
    cfg = Config()
    assert (cfg.model.name, cfg.data.name, cfg.support.method) == ("convnet-s", "fashion-mnist", "sgd")


def test_yaml_roundtrip(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "support.method=i-alt", "support.tau=[0.0, 0.1]"])
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again.to_dict() == cfg.to_dict()
    assert again.support.tau == [0.0, 0.1]


def test_int_is_accepted_for_float():
    assert from_dict({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize(
    "data,match",
    [
        ({"train": {"epochz": 3}}, "unknown config key 'train.epochz'"),
        ({"bogus": 1}, "unknown config key 'bogus'"),
        ({"train": {"epochs": "ten"}}, "train.epochs must be int"),
        ({"train": {"lr": "fast"}}, "train.lr must be float"),
        ({"train": {"epochs": 0}}, "train.epochs must be a positive"),
        ({"train": {"epochs": -2}}, "train.epochs must be a positive"),
        ({"support": {"method": "c-alt"}}, "unknown support.method"),
        ({"support": {"rule": "x"}}, "unknown support.rule"),
        ({"support": {"min_gap": 3, "max_gap": 2}}, "min_gap <= max_gap"),
        ({"train": "x"}, "must be a mapping"),
    ],
)
def test_bad_configs(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(data)


def test_override_parsing():
    d = {}
    apply_override(d, "train.lr=0.01")
    apply_override(d, "model.kwargs={width: 8}")
    assert d == {"train": {"lr": 0.01}, "model": {"kwargs": {"width": 8}}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_override(d, "train.lr")


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_eval_batch_size_follows_the_device_unless_given():
    from supportnet.config import EVAL_BATCH, eval_batch_for, load_config, resolve_method_defaults

    assert load_config(None, []).train.eval_batch_size is None  # auto
    assert resolve_method_defaults(load_config(None, [])).train.eval_batch_size == EVAL_BATCH["cpu"] == 128
    cfg = load_config(None, ["train.device=cuda:1"])
    assert resolve_method_defaults(cfg).train.eval_batch_size == EVAL_BATCH["cuda"] > EVAL_BATCH["cpu"]
    assert resolve_method_defaults(load_config(None, ["train.eval_batch_size=77"])).train.eval_batch_size == 77
    assert eval_batch_for(None, torch.device("cpu")) == 128 and eval_batch_for(5, "cuda") == 5
    with pytest.raises(ConfigError, match="eval_batch_size"):
        load_config(None, ["train.eval_batch_size=0"])
    assert load_config(None, []).train.cuda_graphs is False


def test_a_utf8_config_with_a_byte_order_mark_is_read(tmp_path):
    """Some editors save UTF-8 with a byte-order mark: it is UTF-8, so it is read (issue 25; the
    encodings that are refused, with their one line, are rows of tests/test_bad_inputs.py)."""
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xef\xbb\xbf# r\xc3\xa9glages\ntrain:\n  epochs: 2\nout: caf\xc3\xa9\n")
    cfg = load_config(p)
    assert cfg.train.epochs == 2 and cfg.out == "café"


def test_unquoted_off_and_no_read_as_the_off_choice(tmp_path):
    """YAML 1.1 reads ``off``/``no``/``false`` as False: a string key whose choices hold ``off``
    (or ``none``) takes it; anything else is one line that says how to quote the value."""
    p = tmp_path / "c.yaml"
    p.write_text("head:\n  solve: off\ntrain:\n  amp: no\ndata:\n  preprocess: false\nkfac:\n  line_search: off\n")
    cfg = load_config(p)
    assert (cfg.head.solve, cfg.train.amp, cfg.data.preprocess, cfg.kfac.line_search) == ("off", "off", "none", "none")
    assert load_config(None, ["head.solve=off"]).head.solve == "off"
    for text, key in (
        ("head:\n  solve: on\n", "head.solve"),
        ("out: yes\n", "out"),
        ("model:\n  name: no\n", "model.name"),
    ):
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(p)
        msg = str(e.value)
        assert "\n" not in msg and f"config key {key} must be a string" in msg and "quote" in msg, msg
    assert "choose one of: off, round, epoch" in str(
        pytest.raises(ConfigError, load_config, None, ["head.solve=yes"]).value
    )


def test_every_field_with_a_list_of_choices_refuses_a_value_outside_it():
    """The choices sit beside their fields (``_one_of``); validate checks each of them, and every
    list of choices is one of supportnet.choices' (or METHODS)."""
    import dataclasses

    from supportnet import choices

    lists = {v for k, v in vars(choices).items() if k.isupper() and isinstance(v, tuple)}
    checked = []
    for sec in dataclasses.fields(Config):
        part = getattr(Config(), sec.name)
        for f in dataclasses.fields(part) if dataclasses.is_dataclass(part) else ():
            if "choices" in f.metadata:
                assert f.metadata["choices"] in lists, f"{sec.name}.{f.name}"
                assert getattr(part, f.name) in f.metadata["choices"], f"{sec.name}.{f.name}: its default"
                with pytest.raises(ConfigError, match=rf"unknown {sec.name}\.{f.name} 'bogus'; choose one of"):
                    from_dict({sec.name: {f.name: "bogus"}})
                checked.append(f"{sec.name}.{f.name}")
    assert {"train.schedule", "support.method", "data.preprocess", "dsd.prune", "head.solve"} <= set(checked)
    assert len(checked) == 14, checked
