"""The lifting ``F(x) = U(x, m) v(W)`` of paper Sec. 3.2 (Eq. 13-20), made exact.

Conventions (see ``docs/theory.md`` for the derivation):

* A bias-free network ``z_0 = x``, ``z_l = M_l A_l(theta_l) z_{l-1}`` (l < L),
  ``F(x) = A_L(theta_L) z_{L-1}`` (``M_L = I``, paper Eq. 19). Activations are
  flattened row-major, ``(C, H, W) -> C*H*W``, as ``nn.Flatten`` does.
* Each layer map is linear in its parameters: ``A_l(theta) u = J_l(u) theta``.
  - fully connected, ``theta = vec(W)`` **column-major** (the paper's vec):
    ``J(u) = u^T (x) I_out``;
  - convolution, ``theta = weight.flatten()`` (row-major over out, in, kh, kw):
    ``J(u) = I_Cout (x) P(u)^T`` with ``P(u) = unfold(u)`` the (Cin*kh*kw, L)
    patch matrix (the Toeplitz structure, written as im2col).
* Then ``z_l = U_l v_l`` with

      U_1 = M_1 J_1(x)                       (fully connected: x^T (x) M_1, Eq. 14)
      U_{l+1} = M_{l+1} [J_{l+1}(u_1), ..., J_{l+1}(u_K)],  u_k = column k of U_l
              (fully connected: vec(U_l)^T (x) M_{l+1}, Eq. 17 with the transpose)
      v_{l+1} = v_l (x) theta_{l+1}          (Eq. 18)

  so ``F(x) = U_L v_L`` with ``v_L = theta_1 (x) ... (x) theta_L`` (Eq. 19).

Everything here is explicit and exact, meant for small networks in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import HardThreshold, configure, gated_eval, record_masks, set_instance_masks

SUPPORTED = (nn.Linear, nn.Conv2d, HardThreshold, nn.Flatten, nn.Identity)


def _linear_layers(model: nn.Module) -> list[nn.Module]:
    mods = list(model) if isinstance(model, nn.Sequential) else [model]
    flat: list[nn.Module] = []
    for m in mods:
        if isinstance(m, nn.Sequential):
            flat += _linear_layers(m)
        elif isinstance(m, SUPPORTED):
            flat.append(m)
        else:
            raise ValueError(f"lifting supports Linear, Conv2d, HardThreshold and Flatten only, got {type(m).__name__}")
    for m in flat:
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            raise ValueError("lifting needs bias-free layers (the paper sets beta = 0, Eq. 19)")
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
            raise ValueError("lifting supports plain convolutions (groups=1, numeric zero padding)")
    return flat


def theta(layer: nn.Module) -> torch.Tensor:
    """The layer's parameter vector in the convention of this module."""
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().t().reshape(-1)  # column-major vec(W)
    return layer.weight.detach().reshape(-1)


def jacobian(layer: nn.Module, u: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    """``J(u)`` with ``layer(u) = J(u) @ theta(layer)``; ``u`` is a flat activation of ``in_shape``."""
    if isinstance(layer, nn.Linear):
        out = layer.out_features
        return torch.kron(u.reshape(1, -1), torch.eye(out, dtype=u.dtype))  # u^T (x) I
    c = layer.out_channels
    patches = F.unfold(
        u.reshape(1, *in_shape), layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride
    )[0]  # (Cin*kh*kw, L)
    return torch.kron(torch.eye(c, dtype=u.dtype), patches.t().contiguous())  # I_Cout (x) P^T


def conv_matrix(layer: nn.Conv2d, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """The (banded, strided) Toeplitz matrix ``T`` with ``conv(u) = T u`` for flat ``u``."""
    n = int(torch.tensor(in_shape).prod())
    eye = torch.eye(n, dtype=layer.weight.dtype).reshape(n, *in_shape)
    with torch.no_grad():
        cols = F.conv2d(eye, layer.weight, None, layer.stride, layer.padding, layer.dilation)
    return cols.reshape(n, -1).t()


def _out_shape(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(layer(torch.zeros(1, *in_shape, dtype=layer.weight.dtype)).shape[1:])


def lifted_v(model: nn.Module) -> torch.Tensor:
    """``v = theta_1 (x) theta_2 (x) ... (x) theta_L`` (Eq. 18-19)."""
    v = None
    for layer in _linear_layers(model):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            t = theta(layer)
            v = t if v is None else torch.kron(v, t)
    assert v is not None
    return v


def lifted_U(model: nn.Module, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``U(x, m)`` for one example ``x`` (shape ``in_shape``), masks from the model if not given.

    ``masks[i]`` is the support of the i-th threshold layer for this example.
    """
    layers = _linear_layers(model)
    if masks is None:
        masks = [m[0] for m in record_masks(model.eval(), x.unsqueeze(0))]
    mi = 0
    shape: tuple[int, ...] = tuple(x.shape)
    U = x.reshape(-1, 1)  # z_0 = x = U_0 v_0 with v_0 = [1]
    for layer in layers:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            if isinstance(layer, nn.Linear):
                shape = (int(torch.tensor(shape).prod()),)
            U = torch.cat([jacobian(layer, U[:, k], shape) for k in range(U.shape[1])], dim=1)
            shape = _out_shape(layer, shape)
        elif isinstance(layer, HardThreshold):
            m = masks[mi].reshape(-1).to(U.dtype)
            mi += 1
            U = m[:, None] * U  # M_l (diagonal)
        elif isinstance(layer, nn.Flatten):
            shape = (int(torch.tensor(shape).prod()),)
    return U


def check_lifting(model: nn.Module, x: torch.Tensor) -> float:
    """Max relative error of ``U_n v`` against the network's own forward (``linear`` supports)."""
    model = model.double().eval()
    x = x.double()
    masks = record_masks(model, x)
    configure(model, apply="linear")
    set_instance_masks(model, masks)
    with torch.no_grad(), gated_eval(model):  # eval mode is free mode: keep the supports for the reference
        ref = model(x)
    configure(model, mode="free")
    v = lifted_v(model)
    worst = 0.0
    for n in range(x.shape[0]):
        f = lifted_U(model, x[n], [m[n] for m in masks]) @ v
        worst = max(worst, ((f - ref[n]).norm() / ref[n].norm().clamp_min(1e-300)).item())
    return worst
