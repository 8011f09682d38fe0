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

import importlib
import importlib.util
import sys
import types

__version__ = "0.2.0"

# name -> the submodule that defines it. Imported on first use (PEP 562), so that
# ``import supportnet`` and the command line's cheap commands (``supportnet models``,
# ``--version``, ``--help``) do not pay for importing torch (about 1-2 s).
_EXPORTS = {
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
    "count_params": "models",
    "create_model": "models",
    "list_models": "models",
    "register_model": "models",
    "evaluate": "train",
    "fit": "train",
    "train_step": "train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:  # a submodule, as ``sn.data`` was when everything was imported eagerly
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'supportnet' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Two public functions share their name with the submodule that defines them
    (``alternation``, ``convert``). Importing a submodule binds it on the package; here the
    function keeps the name (the submodule stays in ``sys.modules``), as it did when this
    module imported everything eagerly."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
