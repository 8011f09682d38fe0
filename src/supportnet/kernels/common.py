"""What the Triton and the C kernels share: the switch and the memory geometry of activations.

``SUPPORTNET_KERNELS`` (:data:`ENV`) is read in one place, :func:`switched_on`, for both kinds of
kernel; :func:`geometry` says how ``(B, *unit)`` activations sit in memory, which decides whether
a kernel can address them. Nothing here imports a layer: the layer chooses the kernel.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch

from ..errors import ConfigError

ENV = "SUPPORTNET_KERNELS"  # "0": never use the kernels

ENV_CHOICES = ("", "0", "1")  # SUPPORTNET_KERNELS: unset or 1 (use them where they run), 0 (never)


def switched_on() -> bool:
    """``SUPPORTNET_KERNELS`` read (one place for the Triton and the C kernels); a value that is not
    a choice is a :class:`~supportnet.errors.ConfigError`, not silently "on"."""
    value = os.environ.get(ENV, "")
    if value not in ENV_CHOICES:
        raise ConfigError(f"{ENV}={value!r} is not a choice; set it to 0 (the torch code) or 1, or unset it")
    return value != "0"


class Geometry(NamedTuple):
    """How ``(B, *unit)`` activations sit in memory: ``U`` units per example, memory-order
    sizes ``e2, e3`` of the last two unit dimensions and the C-order strides ``l1, l2, l3``
    of the three (padded) unit dimensions in memory order; ``ident`` when both orders agree."""

    units: int
    e2: int
    e3: int
    l1: int
    l2: int
    l3: int
    ident: bool


def geometry(q: torch.Tensor) -> Geometry | None:
    """The :class:`Geometry` of ``q``, or None when the kernels cannot address it (a layout
    that is not dense per example, more than 3 unit dimensions)."""
    if q.dim() < 2:
        return None
    shape, strides = q.shape[1:], q.stride()[1:]
    units = math.prod(shape)
    if q.shape[0] > 1 and q.stride(0) != units:
        return None
    cstride, acc = [0] * len(shape), 1
    for i in range(len(shape) - 1, -1, -1):
        cstride[i] = acc
        acc *= shape[i]
    dims = sorted(((strides[i], shape[i], cstride[i]) for i in range(len(shape)) if shape[i] > 1), reverse=True)
    expect = 1
    for stride, size, _ in reversed(dims):
        if stride != expect:
            return None
        expect *= size
    if len(dims) > 3:
        return None
    dims = [(0, 1, 0)] * (3 - len(dims)) + dims
    ident = all(s == c for s, _, c in dims if s)
    return Geometry(units, dims[1][1], dims[2][1], dims[0][2], dims[1][2], dims[2][2], ident)
