"""Atomic, verified files: every write goes to a temporary file, is fsynced, then renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import faults
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: F401  (imported from here by callers)
from .errors import SupportnetError


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
