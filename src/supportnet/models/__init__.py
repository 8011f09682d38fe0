"""Model registry (the timm habit): ``create_model(name, in_shape, num_classes)``.

Every model takes ``act_layer`` (default :class:`~supportnet.HardThreshold`) so the
non-linearity is swappable without editing the model.
"""

from __future__ import annotations

from collections.abc import Callable

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
    """The number of parameters of ``model`` (every element of every parameter tensor)."""
    return sum(p.numel() for p in model.parameters())


from . import allcnn, imagenet, nin, simple  # noqa: E402,F401  (registers models)


def default_input(name: str) -> tuple[int, int, int]:
    """The input shape a model is listed with (``supportnet models``)."""
    fn = _REGISTRY[name]
    import inspect

    return tuple(inspect.signature(fn).parameters["in_shape"].default)
