"""Every list of choices in supportnet, in one place.

The config validates against these, the layers and schedules dispatch on them, and the
command line and the presets of ``supportnet compare`` are built from them, so a new
choice is added here once.
"""

from __future__ import annotations

#: Training methods (``support.method``; paper Sec. 4): free SGD, B- and I-alternation.
METHODS = ("sgd", "b-alt", "i-alt")
#: How a fixed support is applied (``support.apply``): Eq. 13 literally, or gated by relu_tau.
APPLY = ("linear", "gated")
#: Batch support rules (``support.rule``): Eq. 41, Eq. 41 relative to the layer mean, majority vote.
RULES = ("energy", "energy-rel", "vote")
#: :class:`~supportnet.layers.HardThreshold` modes (set by the training loop, never by the model).
MODES = ("free", "instance", "batch", "binary", "record", "probe")
#: I-alternation back ends (``support.backend``) and where a stored support lives (``support.store``).
BACKENDS = ("stored", "snapshot")
STORES = ("memory", "file")
#: B-alternation under torchrun (``support.sync``).
SYNCS = ("local", "global", "global-inline")
#: Learning-rate schedules (``train.schedule``); ``linear`` decays to zero at the last step.
LR_SCHEDULES = ("cosine", "step", "constant", "linear")
#: The weight phase's optimizer (``train.optimizer``; :mod:`supportnet.optim`): SGD (heavy-ball or
#: Nesterov momentum), AdamW, K-FAC under the layers' supports (:mod:`supportnet.solvers`), and
#: heavyball's SOAP (``pip install heavyball``).
OPTIMIZERS = ("sgd", "adamw", "kfac", "soap")
#: K-FAC's step size (``kfac.line_search``): Armijo backtracking, quadratic interpolation, or none.
LINE_SEARCHES = ("armijo", "interp", "none")
#: When the classifier layer is solved exactly (``head.solve``): never, at every support
#: estimation (each I-alternation round; each epoch of B-alternation), or every epoch.
HEAD_SOLVES = ("off", "round", "epoch")
#: Input preprocessing (``data.preprocess``).
PREPROCESS = ("standard", "gcn-zca", "none")
#: Mixed precision (``train.amp``) and where the training set lives (``train.loader``).
AMP = ("off", "bf16")
#: Where a run trains (``train.device``): the CPU, the current GPU, or GPU number N.
DEVICES = ("cpu", "cuda", "cuda:N")
LOADERS = ("host", "device")
#: Device types on which ``train.cuda_graphs`` may capture the step (:mod:`supportnet.cuda_graphs`).
CAPTURE_DEVICES = ("cuda",)
#: DSD's Sparse step (``dsd.prune``): DSD's magnitude rule, support pruning (B- or I-alternation's
#: supports), and a structured baseline by filter L2 norm.
PRUNE = ("magnitude", "support-b", "support-i", "channel-l2")
#: ``supportnet export --format``: a checkpoint of the weights, safetensors, TorchScript, ONNX.
EXPORT_FORMATS = ("state_dict", "safetensors", "torchscript", "onnx")

#: ``supportnet compare`` presets: every method by its name, and named variants (support overrides).
PRESETS: dict[str, dict] = {
    **{m: {"method": m} for m in METHODS},
    "b-alt-energy": {"method": "b-alt", "rule": "energy", "beta": 0.0},
    "b-alt-vote": {"method": "b-alt", "rule": "vote"},
    "b-alt-linear": {"method": "b-alt", "apply": "linear"},
    "i-alt-stored": {"method": "i-alt", "backend": "stored"},
    "i-alt-snapshot": {"method": "i-alt", "backend": "snapshot"},
    "i-alt-linear": {"method": "i-alt", "apply": "linear"},
}

#: Where a run's numbers go (``train.loggers``); ``csv`` (metrics.csv) is always written.
LOGGERS = ("csv", "jsonl", "tensorboard")
