"""The paths a command reads and writes, checked before anything is read or written.

Two checks, used by every command: :func:`check_input_file` for a file it reads (a
config, a checkpoint, a mask store) and :func:`check_output_dir` for a folder it
writes (``--out``, ``--root``). Each turns every way a path can be wrong into one
:class:`~supportnet.errors.SupportnetError` line naming the path, what is wrong with
it and the fix, instead of a traceback from deep inside the run, or a run that
trains for an hour and then cannot save. Neither check writes anything.

:func:`read_utf8` reads a text file (a config) that way: text saved in another encoding
(UTF-16, Latin-1) is named as such, with the fix, rather than called binary.
"""

from __future__ import annotations

import codecs
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


#: Byte-order marks of the encodings a text editor saves as "Unicode" (UTF-32 first: its LE mark
#: begins with UTF-16's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
#: Control bytes that text holds (tab, newline, vertical tab, form feed, carriage return).
_TEXT_CONTROLS = frozenset(b"\t\n\x0b\x0c\r")


def read_utf8(path: Path, what: str, fix: str) -> str:
    """The text of the file ``path`` (checked by :func:`check_input_file`), read as UTF-8.

    A UTF-8 byte-order mark is dropped. Text in another encoding is refused in one line that
    names it and says to save the file as UTF-8: a UTF-16 or UTF-32 byte-order mark, UTF-16
    without one (every other byte NUL), or the first byte that is not UTF-8 (Latin-1's ``é``
    is 0xE9), with its offset and line. Bytes that are not text at all (NULs, control bytes)
    are "not a text file"; ``fix`` ends that line (and the one for a file that cannot be read).
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read ({e.strerror or e}); {fix}") from None
    name = f"{what} {path}"
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            raise ConfigError(f"{name} is not UTF-8 (it has a {enc} byte-order mark); save it as UTF-8")
    if b"\x00" in raw:
        enc = _utf16_without_bom(raw)
        if enc:
            raise ConfigError(f"{name} is not UTF-8 (it looks like {enc} without a byte-order mark); save it as UTF-8")
        raise ConfigError(f"{name} is not a text file (a NUL byte at offset {raw.index(0)}); {fix}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if _binary(raw):
            raise ConfigError(f"{name} is not a text file; {fix}") from None
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{name} is not UTF-8 (byte 0x{raw[e.start]:02X} at offset {e.start}, line {line}); save it as UTF-8"
        ) from None


def _utf16_without_bom(raw: bytes) -> str | None:
    """``"UTF-16LE"`` or ``"UTF-16BE"`` if ``raw`` looks like mostly-ASCII text in it (NULs at every
    other byte, on one side only), else None."""
    head = raw[:4096]
    even, odd = head[0::2].count(0), head[1::2].count(0)
    half = len(head) // 2
    if half and odd >= 0.6 * half and even == 0:
        return "UTF-16LE"
    if half and even >= 0.6 * half and odd == 0:
        return "UTF-16BE"
    return None


def _binary(raw: bytes) -> bool:
    """Whether ``raw`` holds control bytes that no text does (more than 2% of its first 4 kB)."""
    head = raw[:4096]
    controls = sum(1 for b in head if (b < 0x20 and b not in _TEXT_CONTROLS) or b == 0x7F)
    return controls > 0.02 * len(head)
