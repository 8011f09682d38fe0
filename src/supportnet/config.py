"""Typed configuration: nested dataclasses, YAML in and out, ``--set key=value`` overrides.

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
with one line naming the key and the fix. Every number is checked against its
range (:data:`RANGES`; floats must be finite, integers fit in int64), and YAML is
read with bounds (:func:`load_yaml`: size, nesting depth, alias expansion,
duplicate keys), so the cost of refusing a config is bounded by its size.

Over 500 lines: this is the one source of what a config is: the dataclasses (every key with
its default and comment), their ranges, the method defaults, and the only path from text to a
:class:`Config` (YAML files and ``--set`` values alike). A key's field, range and check change
together, in one file. The bounded YAML reader (``_BoundedLoader`` to ``_yaml_error``, about
100 lines) is the one separable piece; it stays because config text is all it reads and its
errors name config keys.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import choices
from .choices import METHODS
from .errors import ConfigError
from .paths import check_input_file, read_utf8


def _one_of(default: str, allowed: tuple[str, ...]):
    """A config field that takes one of ``allowed`` (a list of :mod:`supportnet.choices`),
    checked by :func:`validate`."""
    return field(default=default, metadata={"choices": allowed})


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # registered data set (supportnet data list)
    data_dir: str | None = None  # looked up first; then $SUPPORTNET_DATA, ~/.cache/supportnet, /usr/share/datasets
    subset: int | None = None  # train on a seeded subset of N training examples
    test_subset: int | None = None  # evaluate on a fixed subset of N test examples (the same for every seed)
    val: int = 0  # seeded hold-out of N training examples for tuning (never the test set)
    pad: int = 0  # zero padding on each side (28x28 -> 32x32 with pad=2)
    normalize: bool = True  # per-channel mean/std from the training split
    # standard (mean/std) | gcn-zca (ALL-CNN/NIN on CIFAR) | none
    preprocess: str = _one_of("standard", choices.PREPROCESS)
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
    momentum: float = 0.9  # heavy-ball (or Nesterov) momentum of sgd and kfac; adamw and soap keep their own
    weight_decay: float = 5e-4
    # cosine | step | constant | linear (to zero at the last step)
    schedule: str = _one_of("cosine", choices.LR_SCHEDULES)
    lr_warmup: float = 0.0  # epochs of linear learning-rate warm-up from 0 (then the schedule)
    # sgd | adamw | kfac (the kfac section) | soap (heavyball); supportnet.optim
    optimizer: str = _one_of("sgd", choices.OPTIMIZERS)
    nesterov: bool = False  # sgd: Nesterov momentum
    label_smoothing: float = 0.0  # of the training cross-entropy (evaluation stays the plain one)
    milestones: list = field(default_factory=list)  # epochs at which 'step' multiplies lr by gamma
    gamma: float = 0.1
    seed: int = 0  # seeds weights, data order and dropout
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads; None leaves the default
    eval_batch_size: int | None = None  # evaluation and support estimation; None: the device's (eval_batch_for)
    train_eval_size: int = 10000  # training examples evaluated in free mode each epoch (0: skip)
    maskt: bool = False  # also evaluate with binary masks (the paper's MaskT)
    stats_every: int = 10  # steps between samples of active fraction and support drift
    checkpoint_every: int = 1  # epochs between checkpoints (0: only the final one)
    checkpoint_steps: int = 0  # also checkpoint every N optimizer steps, mid-epoch (0: off)
    evals_per_epoch: int = 1  # test evaluations per epoch for the convergence trace (time-to-target)
    loggers: list = field(default_factory=lambda: ["csv"])  # csv (metrics.csv, always) | jsonl | tensorboard
    log_every: int = 20  # optimizer steps between step scalars (loss, lr, active fraction) for jsonl/tensorboard
    trace_train_loss: bool = False  # also put the free-mode train loss/accuracy (train_eval_size examples) in the trace
    # GPU fast path (docs/performance.md); all off by default
    amp: str = _one_of("off", choices.AMP)  # off | bf16 (autocast of the forward pass and loss)
    channels_last: bool = False  # NHWC memory format for model and inputs
    compile: bool = False  # torch.compile the model
    # host | device (whole data set resident on the device; augmentation as tensor ops there)
    loader: str = _one_of("host", choices.LOADERS)
    cuda_graphs: bool = False  # capture fit()'s step in a CUDA graph (supportnet.cuda_graphs); not timed on a GPU yet


@dataclass
class SupportConfig:
    method: str = _one_of("sgd", METHODS)  # sgd | b-alt | i-alt
    apply: str = _one_of("gated", choices.APPLY)  # linear (z = m*q, Eq. 13) | gated (z = m*relu_tau(q))
    rule: str = _one_of("energy-rel", choices.RULES)  # batch rule: energy (Eq. 41) | energy-rel | vote
    tau: Any = 0.0  # threshold, one value or one per layer
    beta: float = 0.1  # Eq. 41's beta (for energy-rel, in units of the layer's mean energy)
    warmup: int = 1  # epochs of free SGD before alternation starts
    min_gap: int = 1  # i-alt: fewest epochs between support re-estimations
    max_gap: int = 1  # i-alt: most epochs between support re-estimations (1: every epoch, the measured default)
    plateau_tol: float = 0.05  # i-alt: relative drop of the training loss below which it has plateaued
    patience: int = 1  # i-alt: epochs below plateau_tol before re-estimating
    # i-alt supports: stored (bit-packed MaskStore) | snapshot (frozen weights)
    backend: str = _one_of("snapshot", choices.BACKENDS)
    store: str = _one_of("memory", choices.STORES)  # stored back end: memory | file (memory-mapped, in the run folder)
    lr_scale: float = 1.0  # learning-rate multiplier while a support is held fixed
    # b-alt batch support: local (this rank's examples, inside the training forward) |
    # global-inline (the global batch, inside the training forward: one small collective per layer; the
    # global mode to use) | global (the global batch from a no-grad probe pass, one collective per step)
    sync: str = _one_of("local", choices.SYNCS)
    probe: bool = False  # b-alt: estimate the batch support in a probe pass even when sync=local
    consistency: float | None = None  # penalty keeping pre-activations consistent with a fixed support;
    # None: the method's tuned default (METHOD_DEFAULTS)


@dataclass
class KFACConfig:
    """K-FAC under the layers' supports (``train.optimizer=kfac``; supportnet.solvers.KFAC)."""

    damping: float = 0.01  # Tikhonov damping of the Kronecker factors (factored, pi-damping)
    update_every: int = 10  # steps between inverses of the factors
    factor_every: int = 1  # steps between factor updates
    ema: float = 0.05  # weight of a new batch in the factors' running averages
    # armijo | interp | none: the step size, by extra forwards under the held support
    line_search: str = _one_of("armijo", choices.LINE_SEARCHES)
    ls_steps: int = 5  # most trial step sizes per step
    hold: bool = True  # hold a B-alternation batch support fixed across the line search's passes


@dataclass
class HeadConfig:
    """The exact solve of the classifier layer on the network's features (supportnet.solvers.solve_head)."""

    # off | round (at each support estimation) | epoch (at every epoch's start)
    solve: str = _one_of("off", choices.HEAD_SOLVES)
    tol: float = 1e-6  # gradient norm at which the convex problem counts as solved
    max_iter: int = 50  # most Newton (or L-BFGS) iterations
    max_examples: int | None = None  # solve on the first N training examples (None: all)


@dataclass
class DSDConfig:
    """Dense-Sparse-Dense training (``supportnet dsd``; docs/dsd.md)."""

    dense_epochs: int = 3  # E_d: dense training (SGD)
    sparse_epochs: int = 2  # E_s: sparse retraining with the pruned weights held at zero
    redense_epochs: int = 1  # E_r: the pruned weights restart at zero and train again
    prune: str = _one_of("support-b", choices.PRUNE)  # magnitude (DSD's baseline) | support-b | support-i | channel-l2
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
    kfac: KFACConfig = field(default_factory=KFACConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    out: str | None = None  # run folder (default: runs/<model>-<method>-<time>)
    quiet: bool = False  # no progress bar

    def to_dict(self) -> dict:
        """The config as nested plain dicts (YAML- and JSON-ready)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The config as YAML, in field order (what ``config.yaml`` in a run folder holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def copy(self) -> Config:
        """A deep, validated copy."""
        return from_dict(self.to_dict())


#: Tuned defaults for support fields left as None (see docs/alternation.md for the measurements).
METHOD_DEFAULTS = {
    "sgd": {"consistency": 0.0},
    "b-alt": {"consistency": 0.0},
    "i-alt": {"consistency": 1.0},
}


#: ``train.eval_batch_size: null`` (auto): the evaluation and support-estimation batch per device
#: type. On the 2-core CPU a no-grad forward over 12,800 images took 1.8 s at 128 against 4.5 s at
#: 1000 (the activations of 1000 images overflow the caches); on an H100 the estimation pass took
#: 1.53-1.65 training epochs at 128 against 1.14-1.51 at 1000 (docs/performance.md). Lower it
#: by hand for large inputs on a small GPU.
EVAL_BATCH = {"cpu": 128, "cuda": 1024}


def eval_batch_for(value: int | None, device) -> int:
    """``train.eval_batch_size`` as given, or for None (auto) the device type's :data:`EVAL_BATCH`."""
    if value is not None:
        return int(value)
    kind = device.type if hasattr(device, "type") else str(device).split(":")[0]
    return EVAL_BATCH.get(kind, EVAL_BATCH["cuda"])


def resolve_method_defaults(cfg: Config) -> Config:
    """Fill fields left as None with their resolved value (in place): the method's tuned
    support defaults, and the device's evaluation batch (:func:`eval_batch_for`)."""
    for k, v in METHOD_DEFAULTS[cfg.support.method].items():
        if getattr(cfg.support, k) is None:
            setattr(cfg.support, k, v)
    cfg.train.eval_batch_size = eval_batch_for(cfg.train.eval_batch_size, cfg.train.device)
    return cfg


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


INT64_MAX = 2**63 - 1


def _short(value) -> str:
    """``value`` for a one-line message (a huge integer or string is cut)."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python prints
        return f"an integer of about {value.bit_length() * 0.30103:.0f} digits"
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(value: float, key: str) -> float:
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise ConfigError(f"config key {key} must be a finite number, got {_short(value)}; fix the value")
    return f


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
                if len(args) == 2:  # X | None: X's own message (it names a non-finite or too large value)
                    raise
        raise ConfigError(
            f"config key {key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}; fix the value"
        )
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(value, key)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
        try:
            f = float(value)
        except ValueError:
            pass
        else:
            return _finite(f, key)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if not -INT64_MAX <= value <= INT64_MAX:
            raise ConfigError(f"config key {key} = {_short(value)} is out of range (beyond 64 bits); fix the value")
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is str and isinstance(value, bool):
        return _unquoted_word(value, key)
    if (tp is list or origin is list) and isinstance(value, list):
        return value
    if (tp is dict or origin is dict) and isinstance(value, dict):
        return value
    raise ConfigError(
        f"config key {key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__}); fix the value"
    )


def _unquoted_word(value: bool, key: str) -> str:
    """A string key given an unquoted YAML 1.1 boolean word (``head.solve: off`` reads as False):
    False is the key's ``off`` (or ``none``) choice where it has one; anything else is refused
    with one line that says why the text became a boolean and how to quote it."""
    allowed = choices_of(*key.split(".", 1)) if "." in key else ()
    for word in ("off", "none") if value is False else ("on",):
        if word in allowed:
            return word
    among = f"; choose one of: {', '.join(allowed)}" if allowed else ""
    raise ConfigError(
        f"config key {key} must be a string, got {str(value).lower()} (YAML reads unquoted yes/no/on/off/true/false "
        f"as booleans); quote the value, e.g. {key.rsplit('.', 1)[-1]}: 'text'{among}"
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


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric config key: ``lo <= v <= hi`` (``<`` where open)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    fix: str = "fix the value"

    def holds(self, v: float) -> bool:
        """Whether ``v`` is in the range."""
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self, integer: bool) -> str:
        """The range in words, for a message: ``"a positive integer"``, ``"in [0, 1)"``."""
        if self.lo == 0 and self.lo_open and self.hi is None:
            return "positive"
        if integer and self.lo == 1 and self.hi is None:
            return "a positive integer"
        if self.lo == 0 and self.hi is None:
            return "zero or more" if not integer else "a non-negative integer"
        if self.hi is None:
            return f"{'above' if self.lo_open else 'at least'} {self.lo}"
        if integer and self.lo == 1:
            return f"a positive integer of at most {self.hi}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


#: Every numeric config key's range, checked by :func:`validate` (None values are not checked).
#: The upper bounds keep a typo from allocating the machine away (data.pad, data.image_size) or
#: from reaching torch as a value it cannot take (train.threads, train.seed).
RANGES: dict[str, Range] = {
    "data.subset": Range(1, fix="drop it to use the whole set"),
    "data.test_subset": Range(1, fix="drop it to evaluate on the whole test set"),
    "data.val": Range(0),
    "data.pad": Range(0, 64, fix="28x28 -> 32x32 is data.pad=2"),
    "data.image_size": Range(1, 1024, fix="ImageNet models take 224"),
    "data.workers": Range(0, 256),
    "train.epochs": Range(1, 1_000_000, fix="set it to 1 or more"),
    "train.batch_size": Range(1, 1 << 20, fix="set it to 1 or more"),
    "train.lr": Range(0, lo_open=True, fix="try 0.05"),
    "train.momentum": Range(0, 1, hi_open=True, fix="try 0.9"),
    "train.weight_decay": Range(0),
    "train.gamma": Range(0, lo_open=True, fix="try 0.1"),
    "train.lr_warmup": Range(0, fix="give epochs of warm-up, e.g. 0.5"),
    "train.label_smoothing": Range(0, 1, hi_open=True, fix="try 0.1"),
    "kfac.damping": Range(0, lo_open=True, fix="try 0.01"),
    "kfac.update_every": Range(1, fix="set it to 1 or more"),
    "kfac.factor_every": Range(1, fix="set it to 1 or more"),
    "kfac.ema": Range(0, 1, lo_open=True, fix="try 0.05"),
    "kfac.ls_steps": Range(1, 100, fix="try 5"),
    "head.tol": Range(0, lo_open=True, fix="try 1e-6"),
    "head.max_iter": Range(1, 100_000, fix="try 50"),
    "head.max_examples": Range(1, fix="drop it to solve on the whole training set"),
    "train.seed": Range(0, INT64_MAX),
    "train.threads": Range(1, 4096, fix="drop it to use torch's default"),
    "train.eval_batch_size": Range(1, 1 << 20, fix="set it to 1 or more"),
    "train.train_eval_size": Range(0),
    "train.stats_every": Range(1, fix="set it to 1 or more"),
    "train.log_every": Range(1, fix="set it to 1 or more"),
    "train.checkpoint_every": Range(0),
    "train.checkpoint_steps": Range(0),
    "train.evals_per_epoch": Range(0, 10_000),
    "support.beta": Range(0),
    "support.warmup": Range(0),
    "support.min_gap": Range(1),
    "support.max_gap": Range(1),
    "support.plateau_tol": Range(0),
    "support.patience": Range(1),
    "support.lr_scale": Range(0, lo_open=True),
    "support.consistency": Range(0),
    "dsd.dense_epochs": Range(0, 1_000_000),
    "dsd.sparse_epochs": Range(0, 1_000_000),
    "dsd.redense_epochs": Range(0, 1_000_000),
    "dsd.sparsity": Range(0, 1, hi_open=True),
    "dsd.eps": Range(0, 1, hi_open=True),
    "dsd.sparse_lr": Range(0, lo_open=True),
    "dsd.redense_lr": Range(0, lo_open=True),
}

_DEVICE = re.compile(r"^(cpu|cuda(:[0-9]{1,4})?)$")


def _check_ranges(cfg: Config) -> None:
    for key, r in RANGES.items():
        sec, name = key.split(".")
        v = getattr(getattr(cfg, sec), name)
        if v is None or r.holds(v):
            continue
        integer = isinstance(v, int)
        raise ConfigError(f"{key} must be {r.describe(integer)}, got {_short(v)}; {r.fix}")


def _check_lists(cfg: Config) -> None:
    """The keys typed list / Any: support.tau, train.milestones, train.loggers, model.kwargs."""
    s, t = cfg.support, cfg.train
    for name in t.loggers:
        if name not in choices.LOGGERS:
            raise ConfigError(f"unknown train.loggers entry {_short(name)}; choose from: {', '.join(choices.LOGGERS)}")
    taus = s.tau if isinstance(s.tau, list) else [s.tau]
    if len(taus) > 10_000 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in taus):
        raise ConfigError(f"support.tau must be a number or a list of numbers, got {_short(s.tau)}; fix the value")
    if not all(math.isfinite(x) for x in taus):
        raise ConfigError(f"support.tau must be finite, got {_short(s.tau)}; fix the value")
    ms = t.milestones
    if len(ms) > 10_000 or not all(isinstance(m, int) and not isinstance(m, bool) and 0 <= m <= 10**6 for m in ms):
        raise ConfigError(
            f"train.milestones must be a list of epoch numbers (integers >= 0), got {_short(ms)}; e.g. [30, 60]"
        )
    if not all(isinstance(k, str) and k.isidentifier() for k in cfg.model.kwargs):
        bad = next(k for k in cfg.model.kwargs if not (isinstance(k, str) and k.isidentifier()))
        raise ConfigError(f"model.kwargs key {_short(bad)} is not an argument name; e.g. model.kwargs={{width: 16}}")


def _refuse_graphs(why: str) -> None:
    raise ConfigError(f"train.cuda_graphs=true {why} drop train.cuda_graphs")


def _check_cuda_graphs(cfg: Config) -> None:
    """What the config alone says against ``train.cuda_graphs=true`` (the run's own checks are
    :func:`supportnet.cuda_graphs.check_run`, before anything is written)."""
    t, s = cfg.train, cfg.support
    if not t.cuda_graphs:
        return
    if t.device.split(":")[0] not in choices.CAPTURE_DEVICES:
        _refuse_graphs(f"needs a GPU (got train.device={t.device}); set train.device=cuda, or")
    if t.optimizer != "sgd" or cfg.head.solve != "off":
        _refuse_graphs("captures the SGD step only; set train.optimizer=sgd and head.solve=off, or")
    if t.compile:
        _refuse_graphs("and train.compile=true would both capture the step; drop train.compile, or")
    if s.method == "b-alt" and s.sync != "local":
        _refuse_graphs(f"cannot capture support.sync={s.sync} (a collective per step); set support.sync=local, or")
    if s.method == "b-alt" and s.probe:
        _refuse_graphs(
            "cannot capture support.probe=true (its probe pass sets each batch's support from Python); "
            "set support.probe=false, or"
        )


def _check_optimizer(cfg: Config) -> None:
    """The relations between the weight phase's keys that a range cannot say."""
    t = cfg.train
    if t.nesterov and t.optimizer != "sgd":
        raise ConfigError(
            f"train.nesterov=true is SGD's momentum, not {t.optimizer}'s; "
            "set train.optimizer=sgd or drop train.nesterov"
        )
    if t.nesterov and t.momentum == 0:
        raise ConfigError(
            "train.nesterov=true needs momentum, got train.momentum=0; set train.momentum=0.9 or drop train.nesterov"
        )
    if t.lr_warmup >= t.epochs:
        raise ConfigError(
            f"train.lr_warmup ({t.lr_warmup:g} epochs) must be shorter than the run (train.epochs={t.epochs}); "
            "give fewer epochs of warm-up, e.g. train.lr_warmup=0.5"
        )


def choices_of(section: str, name: str) -> tuple[str, ...]:
    """The choices of the field ``section.name`` (its ``_one_of`` metadata); () for a free field."""
    part = next((f for f in dataclasses.fields(Config) if f.name == section), None)
    if part is None or not isinstance(part.default_factory, type):
        return ()
    fld = next((f for f in dataclasses.fields(part.default_factory) if f.name == name), None)
    return tuple(fld.metadata.get("choices", ())) if fld is not None else ()


def validate(cfg: Config) -> Config:
    """Check choices, ranges (:data:`RANGES`) and the relations between keys; return ``cfg``."""
    for sec in dataclasses.fields(cfg):
        part = getattr(cfg, sec.name)
        for f in dataclasses.fields(part) if dataclasses.is_dataclass(part) else ():
            allowed, v = f.metadata.get("choices"), getattr(part, f.name)
            if allowed is not None and v not in allowed:
                raise ConfigError(f"unknown {sec.name}.{f.name} {_short(v)}; choose one of: {', '.join(allowed)}")
    if not _DEVICE.match(cfg.train.device):
        raise ConfigError(
            f"train.device must be {', '.join(choices.DEVICES)}, got {_short(cfg.train.device)}; e.g. train.device=cpu"
        )
    _check_cuda_graphs(cfg)
    _check_ranges(cfg)
    _check_optimizer(cfg)
    _check_lists(cfg)
    for key, v in (("out", cfg.out), ("data.data_dir", cfg.data.data_dir)):
        if v is not None and not v.strip():
            raise ConfigError(f"{key} is empty; give a folder, or drop it for the default")
    s = cfg.support
    if s.max_gap < s.min_gap:
        raise ConfigError(
            f"support needs warmup >= 0, 1 <= min_gap <= max_gap and patience >= 1 "
            f"(got warmup={s.warmup}, min_gap={s.min_gap}, max_gap={s.max_gap}, "
            f"patience={s.patience}); fix the values"
        )
    return cfg


#: The keys docs/configs.md tables ("The weight phase"), in order; ``section.*``: every key of a
#: section. The table is :func:`key_table`'s, written by ``python scripts/config_tables.py``.
DOC_KEYS = ("train.optimizer", "train.nesterov", "train.momentum", "train.schedule", "train.lr_warmup",
            "train.label_smoothing", "kfac.*", "head.*")  # fmt: skip


def _field_comments(cls) -> dict[str, str]:
    """Each field's ``# comment`` in the dataclass's source (the one description of a key): on
    the field's line, or on its own line just above the field."""
    out, above = {}, None
    for ln in inspect.getsource(cls).splitlines():
        if m := re.match(r"^\s+#\s*(.+)$", ln):
            above = m[1].strip()
            continue
        if m := re.match(r"^\s+(\w+):[^#=]*=[^#]*(?:#\s*(.+))?$", ln):
            note = m[2] or above
            if note:
                out[m[1]] = note.strip()
        above = None
    return out


def key_table(keys=DOC_KEYS) -> str:
    """A Markdown table of ``keys``: each key's default, its values (the one list of choices,
    :func:`choices_of`, or its range, :data:`RANGES`) and its comment in the dataclass."""
    rows = ["| key | default | values | what |", "|---|---|---|---|"]
    cfg, hints = Config(), typing.get_type_hints(Config)
    for pattern in keys:
        sec, name = pattern.split(".")
        cls = hints[sec]
        names = [f.name for f in dataclasses.fields(cls)] if name == "*" else [name]
        notes, types = _field_comments(cls), typing.get_type_hints(cls)
        for n in names:
            default, key = getattr(getattr(cfg, sec), n), f"{sec}.{n}"
            if choices_of(sec, n):
                values = ", ".join(f"`{c}`" for c in choices_of(sec, n))
            elif key in RANGES:
                values = RANGES[key].describe(types[n] is int or types[n] == int | None)
            else:
                values = "`true`, `false`" if types[n] is bool else _type_name(types[n])
            shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
            rows.append(f"| `{key}` | `{shown}` | {values} | {notes.get(n, '').replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


def from_dict(data: dict | None) -> Config:
    return validate(_build(Config, data or {}, ""))


def check_same_config(saved_dict: dict, cfg: Config, run: Path, fix: str) -> None:
    """Refuse ``cfg`` unless it is the config ``run`` was started with, ``saved_dict`` (``out`` and
    ``quiet`` aside, each side's method defaults resolved; ``fix`` ends the one-line error)."""
    saved = resolve_method_defaults(from_dict(saved_dict)).to_dict()
    mine = resolve_method_defaults(cfg.copy()).to_dict()
    for d in (saved, mine):
        d.pop("out", None), d.pop("quiet", None)
    if saved != mine:
        diff = sorted(
            f"{s}.{k}"
            for s in saved
            if isinstance(saved[s], dict)
            for k in saved[s]
            if saved[s][k] != mine.get(s, {}).get(k)
        )
        raise ConfigError(f"the config differs from the one {run} was started with ({', '.join(diff[:4])}); {fix}")


#: Bounds on a YAML text (a config file, a ``--set`` value, a method spec): a config is a few
#: dozen keys, so these refuse only inputs built to hang or exhaust the loader.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 20_000  # after alias expansion ("billion laughs" refused at once)


class YAMLRefused(yaml.MarkedYAMLError):
    """A YAML text refused by a bound or a rule of :func:`load_yaml` (not a syntax error)."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses deep nesting, large or recursive alias expansion and
    duplicate keys while it composes, before any of it is built or copied."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._total = 0
        self._open_anchors: set[str] = set()
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)

    def _measure(self, node) -> tuple[int, int]:
        key = id(node)
        if key not in self._size:
            children: list = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for kv in node.value for n in kv]
            sizes = [self._measure(c) for c in children]  # children were measured when composed
            self._size[key] = (1 + sum(n for n, _ in sizes), 1 + max((d for _, d in sizes), default=0))
        return self._size[key]

    def _count(self, node, depth_here: int, mark) -> None:
        n, d = self._measure(node)
        self._total += n
        if self._total > MAX_YAML_NODES:
            raise YAMLRefused(None, None, f"expands to more than {MAX_YAML_NODES:,} values (aliases?)", mark)
        if depth_here + d - 1 > MAX_YAML_DEPTH:
            raise YAMLRefused(None, None, f"nests deeper than {MAX_YAML_DEPTH} levels", mark)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise YAMLRefused(
                    None, None, f"has an alias *{event.anchor} inside the value it names", event.start_mark
                )
            node = super().compose_node(parent, index)
            self._count(node, self._depth + 1, event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise YAMLRefused(None, None, f"nests deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open_anchors.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)
        self._total += 1
        if self._total > MAX_YAML_NODES:
            raise YAMLRefused(None, None, f"holds more than {MAX_YAML_NODES:,} values", event.start_mark)
        self._measure(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: the base class says so
                    continue
                if dup:
                    raise YAMLRefused(None, None, f"has the key {_short(key)} twice", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str):
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(text: str, what: str, fix: str = "fix the syntax"):
    """``yaml.safe_load(text)`` within the bounds above; any failure is one :class:`ConfigError`.

    ``what`` names the text for the message ("config file c.yaml", "--set value of train.lr").
    The work done before a refusal is bounded by the length of ``text``.
    """
    try:
        return _parse_yaml(text)
    except Exception as e:  # noqa: BLE001 - every way a text can fail to parse: one message
        raise _yaml_error(e, what, fix) from None


def _yaml_error(e: Exception, what: str, fix: str) -> ConfigError:
    if isinstance(e, YAMLRefused):
        where = f" at line {e.problem_mark.line + 1}" if e.problem_mark is not None else ""
        return ConfigError(f"{what} {e.problem}{where}; {fix}")
    if isinstance(e, yaml.YAMLError):
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return ConfigError(f"{what} is not valid YAML{where}; {fix}")
    # the constructors fail in other ways on hostile text: an integer of 10,000 digits (ValueError),
    # a bare '!!int' (IndexError inside PyYAML), ...: all of them mean the text is not a valid config
    return ConfigError(f"{what} is not valid YAML ({type(e).__name__}: {str(e)[:60]}); {fix}")


def load_config(path: str | Path | None = None, overrides: list | None = None) -> Config:
    """Read a YAML config (bounded ``safe_load``, :func:`load_yaml`) and apply the overrides.

    ``overrides``: ``"key=value"`` strings (the value parsed as YAML, as ``--set`` gives them)
    or ``(key, value)`` pairs (a value already typed, as the command line's own options give them).
    """
    data: dict = {}
    if path is not None:
        p = check_input_file(path, "config file", "pass a YAML file to --config", max_bytes=MAX_CONFIG_BYTES)
        text = read_utf8(p, "config file", "pass a YAML file")  # UTF-8; another encoding is named
        data = load_yaml(text, f"config file {p}") or {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {p} must hold a mapping of sections, got {type(data).__name__}; see configs/ for examples"
            )
        data.pop("paper", None)  # documentation only: the paper's row and figure
    for item in overrides or []:
        apply_override(data, item)
    return from_dict(data)


def apply_override(data: dict, item: str | tuple[str, Any]) -> None:
    """Apply one override: ``"section.key=value"`` (the value parsed as YAML, within the bounds of
    :func:`load_yaml`; text that is not YAML is taken as a string) or ``(key, value)``."""
    if isinstance(item, tuple):
        key, value = item
    else:
        if "=" not in item:
            raise ConfigError(f"override {_short(item)} is not of the form key=value; e.g. --set train.epochs=5")
        key, raw = item.split("=", 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"--set value of {_short(key)} is longer than {MAX_CONFIG_BYTES:,} bytes; shorten it")
        try:
            value = _parse_yaml(raw) if raw.strip() else None
        except YAMLRefused as e:
            raise _yaml_error(e, f"--set value of {_short(key.strip())}", "simplify the value") from None
        except yaml.YAMLError:
            value = raw  # not YAML: the text itself (a path with ': ' in it, say)
        except Exception as e:  # noqa: BLE001
            raise _yaml_error(e, f"--set value of {_short(key.strip())}", "fix the value") from None
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override key {_short(key)} is malformed; e.g. --set train.epochs=5")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {_short(key)} goes through a non-section value; check the key")
    node[parts[-1]] = value
