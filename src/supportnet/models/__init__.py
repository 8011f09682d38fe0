"""Model registry (the timm habit): ``create_model(name, in_shape, num_classes)``.

Every model takes ``act_layer`` (default :class:`~supportnet.HardThreshold`) so the
non-linearity is swappable without editing the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from ..errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_NOTES: dict[str, str] = {}


def register_model(name: str, note: str = "") -> Callable:
    """Decorator: register ``fn(in_shape, num_classes, **kwargs) -> nn.Module`` as model ``name``
    (``note``: one line for ``supportnet models``; default, the first line of its docstring)."""

    def deco(fn):
        _REGISTRY[name] = fn
        _NOTES[name] = note or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return deco


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def model_note(name: str) -> str:
    return _NOTES.get(name, "")


def create_model(name: str, in_shape=(1, 28, 28), num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the registered model ``name`` for inputs of shape ``in_shape`` (C, H, W) and
    ``num_classes`` outputs; ``kwargs`` go to its constructor (e.g. ``width``, ``act_layer``)."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())} (see 'supportnet models')"
        )
    try:
        return _REGISTRY[name](in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r} does not accept these options ({e}); check model.kwargs") from None


def count_params(model: nn.Module) -> int:
    """The number of parameters of ``model`` (shared ones once)."""
    return sum(p.numel() for p in model.parameters())


def param_count(name: str, in_shape=(1, 28, 28), num_classes: int = 10, **kwargs) -> int:
    """:func:`count_params` of ``create_model(name, ...)``, built on the meta device: shapes
    only, no memory and no initialisation (VGG-16's 138M weights count in milliseconds)."""
    with on_meta():
        return count_params(create_model(name, in_shape=in_shape, num_classes=num_classes, **kwargs))


@contextmanager
def on_meta() -> Iterator[None]:
    """Build modules on the meta device (shapes, no storage) with ``nn.init`` switched off.

    The initialisers are no-ops meanwhile: on the meta device some of them (``normal_``) go
    through torch's Python reference kernels, whose first use imports ``torch._dynamo`` (~1 s).
    Not thread-safe: it swaps module attributes of ``torch.nn.init`` for its duration.
    """
    import torch

    inits = {n: getattr(nn.init, n) for n in _INITS if hasattr(nn.init, n)}
    for n in inits:
        setattr(nn.init, n, _keep)
    try:
        with torch.device("meta"):
            yield
    finally:
        for n, fn in inits.items():
            setattr(nn.init, n, fn)


_INITS = (
    "normal_",
    "uniform_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "trunc_normal_",
    "orthogonal_",
    "zeros_",
    "ones_",
    "constant_",
)


def _keep(tensor, *args, **kwargs):
    return tensor


from . import allcnn, imagenet, nin, simple  # noqa: E402,F401  (registers models)


def default_input(name: str) -> tuple[int, int, int]:
    """The input shape a model is listed with (``supportnet models``)."""
    fn = _REGISTRY[name]
    import inspect

    return tuple(inspect.signature(fn).parameters["in_shape"].default)
