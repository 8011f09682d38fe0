"""Global contrast normalisation and ZCA whitening, as used for ALL-CNN and NIN on CIFAR
(Goodfellow et al. 2013's pylearn2 recipe: GCN with scale 55, ZCA with filter bias 0.1).

Statistics come from the training split only. The whitening matrix is cached in
``~/.cache/supportnet/zca`` under the SHA-256 of its inputs (training tensor and
parameters), in a verified checkpoint file, so a stale or damaged cache is never used.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import IntegrityError


def gcn(x: torch.Tensor, scale: float = 55.0, sqrt_bias: float = 0.0, eps: float = 1e-8) -> torch.Tensor:
    """Per image: subtract its mean, divide by its norm / scale."""
    flat = x.reshape(x.shape[0], -1).double()
    flat = flat - flat.mean(1, keepdim=True)
    norm = (sqrt_bias + flat.pow(2).sum(1, keepdim=True)).sqrt() / scale
    return (flat / norm.clamp_min(eps)).reshape(x.shape).float()


def zca_matrix(train: torch.Tensor, filter_bias: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    flat = train.reshape(train.shape[0], -1).double()
    mean = flat.mean(0)
    c = flat - mean
    cov = c.t() @ c / flat.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    W = evecs @ torch.diag((evals.clamp_min(0) + filter_bias).rsqrt()) @ evecs.t()
    return mean.float(), W.float()


def _cache_dir() -> Path:
    return Path(os.environ.get("SUPPORTNET_CACHE", "~/.cache/supportnet")).expanduser() / "zca"


def gcn_zca(train: torch.Tensor, *others: torch.Tensor, filter_bias: float = 0.1, cache: bool = True):
    """GCN every split, ZCA fitted on the (GCN'd) training split and applied to all."""
    g = [gcn(t) for t in (train, *others)]
    key = hashlib.sha256(g[0].numpy().tobytes() + f"|zca|{filter_bias}|v1".encode()).hexdigest()
    path = _cache_dir() / f"{key[:32]}.pt"
    mean = W = None
    if cache and path.is_file():
        try:
            ck = load_checkpoint(path)
            if ck.get("key") == key:
                mean, W = ck["mean"], ck["W"]
        except IntegrityError:
            mean = W = None  # damaged cache: recompute and overwrite
    if mean is None:
        mean, W = zca_matrix(g[0], filter_bias)
        if cache:
            try:
                save_checkpoint(path, {"key": key, "mean": mean, "W": W, "filter_bias": filter_bias})
            except Exception:  # noqa: BLE001 - the cache is an optimisation only
                pass
    out = []
    for t in g:
        flat = t.reshape(t.shape[0], -1)
        out.append(((flat - mean) @ W).reshape(t.shape).contiguous())
    return out
