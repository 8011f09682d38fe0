"""Atomic, verified files: every write goes to a temporary file, is fsynced, then renamed."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import faults
from .errors import IntegrityError, SupportnetError

CHECKPOINT_FORMAT = 1


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temporary file, fsync, rename.

    On any failure (a full disk included) the temporary file is removed and the
    previous ``path``, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, mode) as f:
            faults.hit("disk-full")
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if path.suffix == ".pt":
            faults.hit("checkpoint")  # tests: killed with the temporary file complete, not yet renamed
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise SupportnetError(
            f"could not write {path}: {e.strerror or e}; free some disk space "
            f"or choose another --out folder (the previous file is intact)"
        ) from None
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Save a checkpoint atomically with its format version and a checksum of its body."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    wrapper = {
        "format": CHECKPOINT_FORMAT,
        "sha256": hashlib.sha256(body).hexdigest(),
        "body": torch.frombuffer(bytearray(body), dtype=torch.uint8),
    }
    out = io.BytesIO()
    torch.save(wrapper, out)
    data = out.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path) -> dict:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise SupportnetError(f"checkpoint {path} does not exist; pass the path of a run's checkpoint.pt or final.pt")
    try:
        wrapper = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise IntegrityError(
            f"checkpoint {path} is truncated or not a supportnet checkpoint "
            f"({type(e).__name__}); use another checkpoint or retrain"
        ) from None
    if not isinstance(wrapper, dict) or "format" not in wrapper or "body" not in wrapper:
        raise IntegrityError(f"checkpoint {path} is not a supportnet checkpoint; pass a file written by supportnet")
    if wrapper["format"] != CHECKPOINT_FORMAT:
        raise IntegrityError(
            f"checkpoint {path} has format version {wrapper['format']}, this supportnet reads "
            f"version {CHECKPOINT_FORMAT}; use the supportnet release that wrote it"
        )
    body = wrapper["body"].numpy().tobytes()
    if hashlib.sha256(body).hexdigest() != wrapper.get("sha256"):
        raise IntegrityError(f"checkpoint {path} fails its checksum (corrupt file); use another checkpoint or retrain")
    return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
