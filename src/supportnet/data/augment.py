"""Batched augmentation with tensor ops: random crop with zero padding and horizontal flip.

The view of example ``i`` is a deterministic function of ``(seed, key, i)``: the
random numbers come from a counter-based hash, not from a generator's state, so
the same example gets the same view whichever batch it lands in. The training
loop passes ``key = epoch`` (a fresh view each epoch); stored I-alternation
passes ``key`` fixed for a whole round, so the supports it stored stay exact.
"""

from __future__ import annotations

import torch

_M = (1 << 63) - 1


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 63-bit integer hash (splitmix64-style), vectorised on int64 tensors."""
    x = (x + 0x1E3779B97F4A7C15) & _M
    x = ((x ^ (x >> 30)) * 0x3F58476D1CE4E5B9) & _M
    x = ((x ^ (x >> 27)) * 0x14D049BB133111EB) & _M
    return x ^ (x >> 31)


def view_randoms(seed: int, key: int, index: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` pseudo-random non-negative ints per example, a function of (seed, key, index) only."""
    base = _mix(_mix(torch.full_like(index, int(seed) & _M)) ^ (int(key) & _M))
    cols = [_mix(base ^ _mix(index.long() * 0x9E37 + j)) for j in range(n)]
    return torch.stack(cols, 1)


def crop_flip(
    x: torch.Tensor, index: torch.Tensor, seed: int, key: int, pad: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random ``pad``-pixel crop and horizontal flip of a batch ``(B, C, H, W)``."""
    b, c, h, w = x.shape
    r = view_randoms(seed, key, index.cpu(), 3).to(x.device)
    dy, dx = r[:, 0] % (2 * pad + 1), r[:, 1] % (2 * pad + 1)
    padded = torch.nn.functional.pad(x, [pad] * 4)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    out = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    out = out.permute(0, 3, 1, 2)
    if flip:
        f = (r[:, 2] % 2).bool()
        out = torch.where(f[:, None, None, None], out.flip(-1), out)
    return out.contiguous()
