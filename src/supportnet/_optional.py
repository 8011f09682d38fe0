"""Optional dependencies: each is named with the extra that installs it.

``pip install 'supportnet[images]'`` and so on (see pyproject.toml). A missing package is a
one-line :class:`~supportnet.errors.SupportnetError` that names the extra, never an
``ImportError`` traceback; plots are skipped with a logged warning instead.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging

from .errors import SupportnetError

log = logging.getLogger("supportnet")

#: importable module -> (pip extra, what needs it)
EXTRAS = {
    "PIL": ("images", "reading image files (image folders)"),
    "scipy": ("svhn", "reading SVHN .mat files"),
    "matplotlib": ("plots", "plots (curves.png)"),
    "tensorboard": ("tensorboard", "the TensorBoard logger"),
    "onnx": ("onnx", "ONNX export"),
    "onnxruntime": ("onnx", "checking an ONNX export"),
    "safetensors": (None, "safetensors files"),  # a core dependency
    "lightning": ("lightning", "the Lightning callback"),
    "triton": ("gpu", "fused GPU kernels"),
    "heavyball": ("optim", "train.optimizer=soap"),
}


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str):
    """Import and return ``module``, or raise a one-line error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra, what = EXTRAS.get(top, (None, module))
        hint = f"pip install 'supportnet[{extra}]'" if extra else f"pip install {top}"
        raise SupportnetError(f"{what} needs the {top!r} package, which is not installed; {hint}") from None


def plot(fn):
    """Decorate a plotting function: without matplotlib it logs a warning and returns None."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not available("matplotlib"):
            log.warning("matplotlib is not installed; skipping %s (pip install 'supportnet[plots]')", fn.__name__)
            return None
        return fn(*args, **kwargs)

    return wrapper
