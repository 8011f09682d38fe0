"""Atomic files: every write goes to a temporary file, is fsynced, then renamed.

Checkpoints (verified torch files) are :mod:`supportnet.checkpoint`, which writes through here."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import faults
from .errors import SupportnetError


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename into it survives a crash (best effort: some file systems refuse)."""
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


def umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, then put it back at once
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 less the umask.

    ``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask; a file that is
    written as a temporary and renamed into place gets this mode instead, as if written directly.
    """
    return 0o666 & ~umask()


def write_error(path: Path, e: OSError) -> SupportnetError:
    """The one-line error for a write to ``path`` that failed with ``e``, with the fix for its cause."""
    import errno

    why = e.strerror or str(e)
    where = f"could not write {path}: {why}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some disk space or choose another --out folder (the previous file is intact)"
    elif e.errno == errno.EISDIR or path.is_dir():
        fix = "it is a folder; name a file inside it or another file"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "the folder is not writable by you; choose another --out folder or fix its permissions"
    elif e.errno in (errno.ENOTDIR, errno.ENOENT, errno.EEXIST):
        fix = "a part of the path is a file, not a folder, or cannot be created; choose another path"
    elif e.errno == errno.ENAMETOOLONG:
        fix = "choose a shorter name"
    else:
        fix = "choose another --out folder (the previous file, if any, is intact)"
    return SupportnetError(f"{where}; {fix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for a writer that takes a file name; when the block
    exits without error it is fsynced and renamed to ``path``.

    On any failure (a full disk included) the temporary file is removed and the previous
    ``path``, if any, is left untouched. The file gets the mode a plain ``open(path, "w")``
    would give it (0666 less the umask), not ``mkstemp``'s 0600. A write that fails is one
    :class:`SupportnetError` line naming its cause (a full disk, a folder in the way, a
    permission, a path that cannot be made).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
        try:
            os.fchmod(fd, new_file_mode())
        except OSError:
            pass  # a file system without modes (some network mounts): keep its default
        os.close(fd)
        faults.hit("disk-full")
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)  # fsync through any descriptor flushes the file's data
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.suffix == ".pt":
            faults.hit("checkpoint")  # tests: killed with the temporary file complete, not yet renamed
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            _unlink(tmp)
        raise write_error(path, e) from None
    except UnicodeEncodeError:  # a name the file system cannot encode (a lone surrogate from a bad argv byte)
        raise SupportnetError(f"cannot write {path!r}: the name is not valid text; choose another name") from None
    except BaseException:
        if tmp is not None:
            _unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temporary file, fsync, rename
    (:func:`atomic_path`: the previous file survives any failure; one-line errors)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        write(f)
    return Path(path)


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))
