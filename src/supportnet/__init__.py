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

import sys as _sys
import types as _types
from typing import TYPE_CHECKING

from ._lazy import lazy_names as _lazy_names

__version__ = "0.2.0"

# name -> the submodule that defines it. Imported on first use (PEP 562), so that
# ``import supportnet`` and the command line's cheap commands (``supportnet models``,
# ``--version``, ``--help``) do not pay for importing torch (about 1-2 s).
_EXPORTS = {
    "tune_allocator": "allocator",
    "BAlternation": "alternation",
    "EpochEvent": "alternation",
    "IAlternation": "alternation",
    "Schedule": "alternation",
    "alternation": "alternation",
    "Config": "config",
    "load_config": "config",
    "ConversionReport": "convert",
    "conversion_report": "convert",
    "convert": "convert",
    "from_datasets": "data.adapters",
    "with_indices": "data.adapters",
    "ConfigError": "errors",
    "DataError": "errors",
    "DivergenceError": "errors",
    "IntegrityError": "errors",
    "SupportnetError": "errors",
    "load_model": "export",
    "HardThreshold": "layers",
    "configure": "layers",
    "record_masks": "layers",
    "support_penalty": "layers",
    "threshold_layers": "layers",
    "MaskStore": "masks",
    "count_params": "models.registry",
    "create_model": "models.registry",
    "list_models": "models.registry",
    "register_model": "models.registry",
    "evaluate": "step",
    "train_step": "step",
    "fit": "train",
}
__all__ = sorted(_EXPORTS)
# Submodules reachable as attributes (``sn.data``), as they were when this module imported
# everything eagerly; any other name is an AttributeError (so ``hasattr`` stays safe).
_SUBMODULES = frozenset(
    (
        "checkpoint",
        "choices",
        "config",
        "data",
        "distributed",
        "errors",
        "export",
        "faults",
        "guard",
        "io",
        "kernels",
        "layers",
        "loggers",
        "masks",
        "models",
        "paths",
        "runfolder",
        "theory",
        "train",
    )  # fmt: skip
)

if TYPE_CHECKING:  # the same names, for type checkers and IDEs (tests/test_docs.py holds them equal)
    from .allocator import tune_allocator  # noqa: F401
    from .alternation import BAlternation, EpochEvent, IAlternation, Schedule, alternation  # noqa: F401
    from .config import Config, load_config  # noqa: F401
    from .convert import ConversionReport, conversion_report, convert  # noqa: F401
    from .data.adapters import from_datasets, with_indices  # noqa: F401
    from .errors import ConfigError, DataError, DivergenceError, IntegrityError, SupportnetError  # noqa: F401
    from .export import load_model  # noqa: F401
    from .layers import HardThreshold, configure, record_masks, support_penalty, threshold_layers  # noqa: F401
    from .masks import MaskStore  # noqa: F401
    from .models.registry import count_params, create_model, list_models, register_model  # noqa: F401
    from .step import evaluate, train_step  # noqa: F401
    from .train import fit  # noqa: F401


__getattr__, __dir__ = _lazy_names(__name__, _EXPORTS, _SUBMODULES)


class _Package(_types.ModuleType):
    """Two public functions share their name with the submodule that defines them
    (``alternation``, ``convert``). Importing a submodule binds it on the package; here the
    function keeps the name (the submodule stays in ``sys.modules``), as it did when this
    module imported everything eagerly."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, _types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
