"""What a finished run leaves: ``final.pt`` and ``model.safetensors``, and reading them back.

A trained network is the paper's network with a fixed ``tau`` per threshold layer (Eq. 9) and no
support held fixed. :func:`save_final` writes it where the training loop ends:

* ``final.pt``: ``{"state_dict", "config", "metrics", "taus", "arch", "supportnet"}``,
  one ``torch.save`` (:mod:`supportnet.checkpoint`). ``["state_dict"]`` loads, strictly,
  into the model built with ``nn.ReLU`` (a ``HardThreshold`` has no parameters or buffers);
  ``"taus"`` maps each threshold layer's name to its ``tau``; ``"arch"`` names the registry
  model, its input shape, classes and options, and ``user_model`` (the class) for a model
  the caller passed to ``fit``.
* ``model.safetensors`` beside it: the same tensors; ``arch``, ``taus`` and ``config`` as JSON
  and the SHA-256 of all of it in the safetensors metadata (written by
  ``safetensors.torch.save_file`` into a temporary file that is renamed into place; read
  back by ``safetensors.torch.load_file`` and checked against the SHA-256).

The other export formats and :func:`~supportnet.export.load_model` are :mod:`supportnet.export`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ._optional import require
from .checkpoint import content_digest, save_checkpoint
from .errors import IntegrityError
from .io import atomic_path
from .layers import threshold_layers

SAFETENSORS_FORMAT = "supportnet-safetensors-1"


def arch_of(cfg, in_shape, num_classes: int, user_model: str | None = None) -> dict:
    """How to build the model again: registry name, input shape, classes, options; and, for a
    model the caller passed to ``fit(cfg, model=...)``, its class path (``user_model``): the
    registry cannot build that one, so :func:`~supportnet.export.load_model` needs a skeleton."""
    c = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
    arch = {
        "name": c["model"]["name"],
        "in_shape": [int(s) for s in in_shape],
        "num_classes": int(num_classes),
        "kwargs": dict(c["model"].get("kwargs") or {}),
    }
    if user_model is not None:
        arch["user_model"] = user_model
    return arch


def class_path(model: nn.Module) -> str:
    """``module.QualifiedName`` of ``model``'s class (what ``arch["user_model"]`` records)."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def taus_of(model: nn.Module) -> dict[str, float]:
    """``{layer name: tau}`` of every threshold layer (Eq. 9's threshold)."""
    return {name: float(layer.tau) for name, layer in threshold_layers(model)}


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights, detached and on the host: what loads into the ``nn.ReLU`` model."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_final(
    out: str | Path, model: nn.Module, cfg, rows: list[dict], in_shape, num_classes: int, user_model: bool = False
) -> Path:
    """Write ``out/final.pt`` and ``out/model.safetensors`` (see the module docstring).
    ``user_model``: ``model`` is the caller's own, not the registry's ``cfg.model`` (recorded in ``arch``)."""
    out = Path(out)
    sd = plain_state_dict(model)
    arch = arch_of(cfg, in_shape, num_classes, class_path(model) if user_model else None)
    taus, config = taus_of(model), cfg.to_dict()
    write_safetensors(out / "model.safetensors", sd, {"arch": arch, "taus": taus, "config": config})
    return save_checkpoint(
        out / "final.pt",
        {"state_dict": sd, "config": config, "metrics": rows, "taus": taus, "arch": arch},
        kind="final",
    )


# ----------------------------------------------------------------------------- safetensors


def _st_digest(tensors: dict[str, torch.Tensor], info: str) -> str:
    return content_digest({"tensors": dict(sorted(tensors.items())), "info": info}, "safetensors")


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` on the host, contiguous, none sharing memory with another (which the
    ``safetensors`` writer refuses: tied weights are stored once per name, as ``final.pt`` loads them)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], info: dict) -> Path:
    """Write ``tensors`` as a safetensors file with ``safetensors.torch.save_file``, atomically.

    Its metadata holds ``format``, ``supportnet`` (``info`` as JSON) and ``sha256`` (of the
    tensors and that JSON), which :func:`read_safetensors` checks. The library writes from the
    tensors' own memory, so memory holds one copy of the model.
    """
    st = require("safetensors.torch")
    tensors = _unshared(tensors)
    text = json.dumps(info, sort_keys=True)
    meta = {"format": SAFETENSORS_FORMAT, "supportnet": text, "sha256": _st_digest(tensors, text)}
    with atomic_path(path) as tmp:
        st.save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the ``supportnet`` metadata of a file written by :func:`write_safetensors`,
    checked against its SHA-256; any other file or a damaged one is an :class:`IntegrityError`."""
    st = require("safetensors.torch")
    path = Path(path)
    try:
        tensors = st.load_file(str(path), device="cpu")
        with st.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - the library's errors for a damaged header or data
        raise IntegrityError(
            f"{path} is truncated or not a safetensors file ({type(e).__name__}: {str(e).splitlines()[0][:60]}); "
            f"use another file"
        ) from None
    if meta.get("format") != SAFETENSORS_FORMAT or "supportnet" not in meta:
        raise IntegrityError(
            f"{path} is a safetensors file without supportnet's metadata (format {meta.get('format')!r}); "
            f"load it with safetensors.torch.load_file"
        )
    if _st_digest(tensors, meta["supportnet"]) != meta.get("sha256"):
        raise IntegrityError(f"{path} fails its checksum (corrupt file); use another file or retrain")
    try:
        info = json.loads(meta["supportnet"])
    except ValueError:
        raise IntegrityError(f"{path}: its supportnet metadata is not JSON; use another file") from None
    return tensors, info
