"""supportnet: CNN training by weight/support alternation.

Implements Huang, Kong & Lucey (2017), "CNNs are Globally Optimal Given
Multi-Layer Support": positive hard-thresholding with a fixed support
(:class:`HardThreshold`), per-example and per-batch supports
(:class:`MaskStore`), SGD / B-alternation / I-alternation schedules for any
training loop (:func:`alternation`) and the ready-made loop (:func:`fit`),
trained models read back as plain PyTorch (:func:`load_model`; :mod:`supportnet.export`)
and the theory of Section 3 (:mod:`supportnet.theory`).

The public API is what this module exports; nothing runs at import time.
"""

from .alternation import BAlternation, EpochEvent, IAlternation, Schedule, alternation
from .config import Config, load_config
from .convert import ConversionReport, conversion_report, convert
from .data.adapters import from_datasets, with_indices
from .errors import ConfigError, DataError, DivergenceError, IntegrityError, SupportnetError
from .export import load_model
from .layers import HardThreshold, configure, record_masks, support_penalty, threshold_layers
from .masks import MaskStore
from .models import count_params, create_model, list_models, register_model
from .train import evaluate, fit, train_step

__version__ = "0.2.0"

__all__ = [
    "BAlternation",
    "Config",
    "ConfigError",
    "ConversionReport",
    "DataError",
    "DivergenceError",
    "EpochEvent",
    "HardThreshold",
    "IAlternation",
    "IntegrityError",
    "MaskStore",
    "Schedule",
    "SupportnetError",
    "alternation",
    "configure",
    "conversion_report",
    "convert",
    "count_params",
    "create_model",
    "evaluate",
    "fit",
    "from_datasets",
    "list_models",
    "load_config",
    "load_model",
    "record_masks",
    "register_model",
    "support_penalty",
    "threshold_layers",
    "train_step",
    "with_indices",
]
