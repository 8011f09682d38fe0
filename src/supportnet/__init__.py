"""supportnet: CNN training by weight/support alternation.

Implements Huang, Kong & Lucey (2017), "CNNs are Globally Optimal Given
Multi-Layer Support": positive hard-thresholding with a fixed support
(:class:`HardThreshold`), per-example and per-batch supports
(:class:`MaskStore`), SGD / B-alternation / I-alternation training (:func:`fit`),
trained models read back as plain PyTorch (:func:`load_model`; :mod:`supportnet.export`)
and the theory of Section 3 (:mod:`supportnet.theory`).

The public API is what this module exports; nothing runs at import time.
"""

from .config import Config, load_config
from .convert import ConversionReport, convert
from .errors import ConfigError, DataError, DivergenceError, IntegrityError, SupportnetError
from .export import load_model
from .layers import HardThreshold, configure, record_masks, threshold_layers
from .masks import MaskStore
from .models import count_params, create_model, list_models, register_model
from .train import evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "HardThreshold",
    "configure",
    "record_masks",
    "threshold_layers",
    "convert",
    "ConversionReport",
    "MaskStore",
    "Config",
    "load_config",
    "fit",
    "evaluate",
    "load_model",
    "create_model",
    "list_models",
    "register_model",
    "count_params",
    "SupportnetError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "IntegrityError",
]
