"""Typed configuration: nested dataclasses, YAML in and out, ``--set key=value`` overrides.

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
with one line naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import choices
from .choices import METHODS
from .errors import ConfigError


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # registered data set (supportnet data list)
    data_dir: str | None = None  # looked up first; then $SUPPORTNET_DATA, ~/.cache/supportnet, /usr/share/datasets
    subset: int | None = None  # train on a seeded subset of N training examples
    test_subset: int | None = None  # evaluate on a fixed subset of N test examples (the same for every seed)
    val: int = 0  # seeded hold-out of N training examples for tuning (never the test set)
    pad: int = 0  # zero padding on each side (28x28 -> 32x32 with pad=2)
    normalize: bool = True  # per-channel mean/std from the training split
    preprocess: str = "standard"  # standard (mean/std) | gcn-zca (ALL-CNN/NIN on CIFAR) | none
    augment: bool = False  # random crop (4-pixel padding) + horizontal flip, batched
    image_size: int | None = None  # imagefolder: resize every image to this square size
    extra: bool = False  # svhn: add extra_32x32.mat to the training split
    stream: bool = False  # imagefolder: decode on the fly in DataLoader workers (random-resized crop, flip)
    workers: int = 4  # DataLoader worker processes for stream=true


@dataclass
class ModelConfig:
    name: str = "convnet-s"  # registered model (supportnet models)
    kwargs: dict = field(default_factory=dict)  # extra constructor arguments, e.g. {width: 16}


@dataclass
class TrainConfig:
    epochs: int = 10  # total epochs, warm-up included
    batch_size: int = 128
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    milestones: list = field(default_factory=list)  # epochs at which 'step' multiplies lr by gamma
    gamma: float = 0.1
    seed: int = 0  # seeds weights, data order and dropout
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads; None leaves the default
    eval_batch_size: int = 128  # evaluation and support estimation (CPU: 2.5x faster than 1000); raise on a GPU
    train_eval_size: int = 10000  # training examples evaluated in free mode each epoch (0: skip)
    maskt: bool = False  # also evaluate with binary masks (the paper's MaskT)
    stats_every: int = 10  # steps between samples of active fraction and support drift
    checkpoint_every: int = 1  # epochs between checkpoints (0: only the final one)
    checkpoint_steps: int = 0  # also checkpoint every N optimizer steps, mid-epoch (0: off)
    evals_per_epoch: int = 1  # test evaluations per epoch for the convergence trace (time-to-target)
    trace_train_loss: bool = False  # also put the free-mode train loss/accuracy (train_eval_size examples) in the trace
    # GPU fast path (docs/performance.md); all off by default
    amp: str = "off"  # off | bf16 (autocast of the forward pass and loss)
    channels_last: bool = False  # NHWC memory format for model and inputs
    compile: bool = False  # torch.compile the model
    loader: str = "host"  # host | device (whole data set resident on the device; augmentation as tensor ops there)


@dataclass
class SupportConfig:
    method: str = "sgd"  # sgd | b-alt | i-alt
    apply: str = "gated"  # linear (z = m*q, Eq. 13) | gated (z = m*relu_tau(q))
    rule: str = "energy-rel"  # batch rule: energy (Eq. 41) | energy-rel | vote
    tau: Any = 0.0  # threshold, one value or one per layer
    beta: float = 0.1  # Eq. 41's beta (for energy-rel, in units of the layer's mean energy)
    warmup: int = 1  # epochs of free SGD before alternation starts
    min_gap: int = 1  # i-alt: fewest epochs between support re-estimations
    max_gap: int = 1  # i-alt: most epochs between support re-estimations (1: every epoch, the measured default)
    plateau_tol: float = 0.05  # i-alt: relative drop of the training loss below which it has plateaued
    patience: int = 1  # i-alt: epochs below plateau_tol before re-estimating
    backend: str = "snapshot"  # i-alt supports: stored (bit-packed MaskStore) | snapshot (frozen weights)
    store: str = "memory"  # stored back end: memory | file (memory-mapped, in the run folder)
    lr_scale: float = 1.0  # learning-rate multiplier while a support is held fixed
    sync: str = "local"  # b-alt batch support: local (this rank's examples, inside the training forward) |
    # global-inline (the global batch, inside the training forward: one small collective per layer; the
    # global mode to use) | global (the global batch from a no-grad probe pass, one collective per step)
    probe: bool = False  # b-alt: estimate the batch support in a probe pass even when sync=local
    consistency: float | None = None  # penalty keeping pre-activations consistent with a fixed support;
    # None: the method's tuned default (METHOD_DEFAULTS)


@dataclass
class DSDConfig:
    """Dense-Sparse-Dense training (``supportnet dsd``; docs/dsd.md)."""

    dense_epochs: int = 3  # E_d: dense training (SGD)
    sparse_epochs: int = 2  # E_s: sparse retraining with the pruned weights held at zero
    redense_epochs: int = 1  # E_r: the pruned weights restart at zero and train again
    prune: str = "support-b"  # magnitude (DSD's baseline) | support-b | support-i | channel-l2
    sparsity: float = 0.3  # magnitude: fraction of each layer's weights pruned; channel-l2: of its units
    eps: float = 0.01  # support-*: a unit on in at most this fraction of batches / examples is pruned
    sparse_lr: float | None = None  # None: train.lr
    redense_lr: float | None = None  # None: 0.1 x train.lr, as DSD recommends


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    support: SupportConfig = field(default_factory=SupportConfig)
    dsd: DSDConfig = field(default_factory=DSDConfig)
    out: str | None = None  # run folder (default: runs/<model>-<method>-<time>)
    quiet: bool = False  # no progress bar

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def copy(self) -> Config:
        return from_dict(self.to_dict())


#: Tuned defaults for support fields left as None (see docs/alternation.md for the measurements).
METHOD_DEFAULTS = {
    "sgd": {"consistency": 0.0},
    "b-alt": {"consistency": 0.0},
    "i-alt": {"consistency": 1.0},
}


def resolve_method_defaults(cfg: Config) -> Config:
    """Fill support fields left as None with the method's tuned default (in place)."""
    for k, v in METHOD_DEFAULTS[cfg.support.method].items():
        if getattr(cfg.support, k) is None:
            setattr(cfg.support, k, v)
    return cfg


CHOICES = {
    ("train", "schedule"): choices.LR_SCHEDULES,
    ("support", "method"): METHODS,
    ("data", "preprocess"): choices.PREPROCESS,
    ("support", "apply"): choices.APPLY,
    ("support", "rule"): choices.RULES,
    ("support", "backend"): choices.BACKENDS,
    ("support", "store"): choices.STORES,
    ("support", "sync"): choices.SYNCS,
    ("train", "amp"): choices.AMP,
    ("dsd", "prune"): choices.PRUNE,
    ("train", "loader"): choices.LOADERS,
}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str):
    """Check ``value`` against the annotation ``tp`` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(
            f"config key {key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}; fix the value"
        )
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if (tp is list or origin is list) and isinstance(value, list):
        return value
    if (tp is dict or origin is dict) and isinstance(value, dict):
        return value
    raise ConfigError(
        f"config key {key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__}); fix the value"
    )


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(
            f"config section {prefix or 'top level'} must be a mapping, got {type(data).__name__}; fix the YAML"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(
                f"unknown config key {key!r}; valid keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(names))}"
            )
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v, key)
        else:
            kwargs[k] = _coerce(v, tp, key)
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    for (sec, key), allowed in CHOICES.items():
        v = getattr(getattr(cfg, sec), key)
        if v not in allowed:
            raise ConfigError(f"unknown {sec}.{key} {v!r}; choose one of: {', '.join(allowed)}")
    t, s = cfg.train, cfg.support
    positive = {
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.eval_batch_size": t.eval_batch_size,
        "train.stats_every": t.stats_every,
    }
    for k, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{k} must be a positive integer, got {v}; set it to 1 or more")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}; try 0.05")
    if not (0 <= t.momentum < 1):
        raise ConfigError(f"train.momentum must be in [0, 1), got {t.momentum}; try 0.9")
    if t.weight_decay < 0 or t.train_eval_size < 0 or t.checkpoint_every < 0 or t.checkpoint_steps < 0:
        raise ConfigError(
            "train.weight_decay, train.train_eval_size, train.checkpoint_every and train.checkpoint_steps "
            "must not be negative; fix the value"
        )
    if s.warmup < 0 or s.min_gap < 1 or s.max_gap < s.min_gap or s.patience < 1:
        raise ConfigError(
            f"support needs warmup >= 0, 1 <= min_gap <= max_gap and patience >= 1 "
            f"(got warmup={s.warmup}, min_gap={s.min_gap}, max_gap={s.max_gap}, "
            f"patience={s.patience}); fix the values"
        )
    if s.beta < 0 or s.lr_scale <= 0 or s.plateau_tol < 0 or (s.consistency is not None and s.consistency < 0):
        raise ConfigError(
            "support.beta, support.plateau_tol and support.consistency must be >= 0 and "
            "support.lr_scale > 0; fix the value"
        )
    taus = s.tau if isinstance(s.tau, list) else [s.tau]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in taus):
        raise ConfigError(f"support.tau must be a number or a list of numbers, got {s.tau!r}; fix the value")
    if cfg.data.subset is not None and cfg.data.subset <= 0:
        raise ConfigError(f"data.subset must be positive, got {cfg.data.subset}; drop it to use the whole set")
    if cfg.data.test_subset is not None and cfg.data.test_subset <= 0:
        raise ConfigError(
            f"data.test_subset must be positive, got {cfg.data.test_subset}; drop it to evaluate on the whole test set"
        )
    ds = cfg.dsd
    if (
        min(ds.dense_epochs, ds.sparse_epochs, ds.redense_epochs) < 0
        or not (0 <= ds.sparsity < 1)
        or not (0 <= ds.eps < 1)
        or any(v is not None and v <= 0 for v in (ds.sparse_lr, ds.redense_lr))
    ):
        raise ConfigError(
            "dsd needs epochs >= 0, 0 <= sparsity < 1, 0 <= eps < 1 and positive learning rates; fix the value"
        )
    if cfg.data.val < 0 or cfg.data.pad < 0:
        raise ConfigError("data.val and data.pad must not be negative; fix the value")
    return cfg


def from_dict(data: dict | None) -> Config:
    return validate(_build(Config, data or {}, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (``yaml.safe_load``) and apply ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; check the path given to --config")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}; fix the syntax") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not a text file; pass a YAML file") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {p} must hold a mapping of sections, got {type(data).__name__}; see configs/ for examples"
            )
        data.pop("paper", None)  # documentation only: the paper's row and figure
    for item in overrides or []:
        apply_override(data, item)
    return from_dict(data)


def apply_override(data: dict, item: str) -> None:
    """Apply one ``section.key=value`` override; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value; e.g. --set train.epochs=5")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override key {key!r} is malformed; e.g. --set train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r} goes through a non-section value; check the key")
    node[parts[-1]] = value
