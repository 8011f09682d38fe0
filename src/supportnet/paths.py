"""The paths a command reads and writes, checked before anything is read or written.

Two checks, used by every command: :func:`check_input_file` for a file it reads (a
config, a checkpoint, a mask store) and :func:`check_output_dir` for a folder it
writes (``--out``, ``--root``). Each turns every way a path can be wrong into one
:class:`~supportnet.errors.SupportnetError` line naming the path, what is wrong with
it and the fix, instead of a traceback from deep inside the run, or a run that
trains for an hour and then cannot save. Neither check writes anything.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import ConfigError


def _text(path: str | Path, what: str) -> str:
    """``path`` as text that every file we write (YAML, JSON, the terminal) can hold."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"{what} {s.encode('utf-8', 'backslashreplace').decode()} is not valid UTF-8 text; "
            f"choose a name made of UTF-8 characters"
        ) from None
    if "\x00" in s:
        raise ConfigError(f"{what} {s!r} holds a NUL character; choose another name")
    if not s:
        raise ConfigError(f"{what} is empty; give a path")
    return s


def check_input_file(path: str | Path, what: str, fix: str, max_bytes: int | None = None) -> Path:
    """``path`` if it is a regular, readable file (of at most ``max_bytes``); else a one-line error.

    ``what`` names the file for the user ("config file", "checkpoint"), ``fix`` says what to pass.
    A folder, a device (``/dev/null``), a pipe or a socket is "not a file", a missing path
    "does not exist", a symlink loop and an unreadable file are named as such.
    """
    p = Path(_text(path, what))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist; {fix}") from None
    except OSError as e:
        why = "is a symlink loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror or e})"
        raise ConfigError(f"{what} {p} {why}; {fix}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {p} is not a file (it is a folder); {fix}")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {p} is not a file (it is a device, pipe or socket); {fix}")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{what} {p} cannot be read (permission denied); {fix}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise ConfigError(f"{what} {p} is {st.st_size:,} bytes, more than the {max_bytes:,} allowed; {fix}")
    return p


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` if a folder can be made (or is) there and written into; else a one-line error.

    Checks, without writing: the name is text; the path, if it exists, is a folder we may
    write into; else its nearest existing ancestor is a folder we may write into (not a
    file, as in ``file.txt/run``). A file system that refuses the folder anyway (``/proc``)
    is caught when the folder is made (:func:`supportnet.runfolder.claim_run_folder`).
    """
    p = Path(_text(path, flag))
    try:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise ConfigError(f"{flag} {p} exists and is not a folder; choose another {flag}")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {p} is not writable by you (permission denied); choose another {flag}")
            return p
        anc = p.absolute().parent
        while not anc.exists() and anc != anc.parent:
            if anc.is_symlink():  # a dangling link in the path
                raise ConfigError(f"{flag} {p} cannot be made: {anc} is a broken symlink; choose another {flag}")
            anc = anc.parent
        if not anc.is_dir():
            raise ConfigError(f"{flag} {p} cannot be made: {anc} is a file, not a folder; choose another {flag}")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise ConfigError(
                f"{flag} {p} cannot be made: {anc} is not writable by you (permission denied); choose another {flag}"
            )
    except OSError as e:  # ELOOP, ENAMETOOLONG, EACCES while looking
        raise ConfigError(f"{flag} {p} cannot be used ({e.strerror or e}); choose another {flag}") from None
    return p
