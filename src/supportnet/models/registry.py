"""The model registry (the timm habit): ``register_model`` and ``create_model``.

The model files register themselves here; :mod:`supportnet.models` imports them all.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from ..errors import ConfigError, SupportnetError
from ..limits import check_memory, human

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
    ``num_classes`` outputs; ``kwargs`` go to its constructor (``model.kwargs``: ``width``,
    ``act_layer``, ...).

    A model that cannot be built from ``kwargs`` (an unknown or negative width, a string
    where a number belongs) is one :class:`ConfigError` line, and one too large for the
    memory available is refused before its weights are allocated: it is built on torch's
    ``meta`` device first, which allocates nothing and draws no random numbers.
    """
    import torch

    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())} (see 'supportnet models')"
        )
    fn = _REGISTRY[name]
    shown = str(kwargs) if len(str(kwargs)) <= 80 else str(kwargs)[:77] + "..."
    try:
        import warnings

        rng = torch.get_rng_state()
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Initializing zero-element tensors": refused below
                probe = fn(in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
        finally:
            torch.set_rng_state(rng)
        empty = next((p for p, t in probe.named_parameters() if t.numel() == 0), None)
        if empty is not None:
            raise ConfigError(
                f"model {name!r} with model.kwargs {shown} has a layer of size 0 ({empty}); check model.kwargs"
            )
        n = count_params(probe)
        # float32 weights, their gradients and the optimizer's momentum, and a copy (the I-alt snapshot)
        if torch.empty(()).device.type != "meta":  # (under on_meta() nothing is allocated)
            check_memory(16 * n, f"model {name!r} ({n:,} parameters, {human(4 * n)})", "make it smaller (model.kwargs)")
        return fn(in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
    except SupportnetError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to build from the user's kwargs is their error
        why = str(e).splitlines()[0][:100] if str(e) else ""
        raise ConfigError(
            f"model {name!r} cannot be built with model.kwargs {shown} ({type(e).__name__}: {why}); "
            f"check model.kwargs (e.g. {{width: 16}})"
        ) from None


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


def default_input(name: str) -> tuple[int, int, int]:
    """The input shape a model is listed with (``supportnet models``)."""
    fn = _REGISTRY[name]
    return tuple(inspect.signature(fn).parameters["in_shape"].default)
