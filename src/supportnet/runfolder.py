"""A run folder is owned by one run: claimed, locked while the run lives, never mixed.

Every command that writes a run folder (``train``, ``compare``, ``dsd``, the ``theory``
actions) claims it through :func:`claim_run_folder` before it writes anything in it:

* the path is checked (:func:`supportnet.paths.check_output_dir`) and the folder made;
* a lock file (``.supportnet.lock``, ``fcntl.flock``) is held for the life of the run, so
  a second process that tries the same folder is refused instead of writing beside it;
* a *new* run into a folder that already holds files is refused (exit 2, one line naming
  ``--resume``, a new ``--out`` and ``--overwrite``) unless ``overwrite=True``, which first
  removes the files that supportnet runs write (:data:`RUN_FILES`; nothing else is touched);
* a *continued* run (``resume=True``) removes the temporaries (``.NAME.XXXXXXXX.tmp``) that a
  killed run left behind; the lock guarantees that no live writer owns them.

:func:`check_run_folder` makes the same checks without writing anything, so a command
can refuse a taken folder before it loads data or builds a model. The lock is released
by :meth:`RunFolder.release`, by leaving its ``with`` block, or, for a claim made inside a
function decorated with :func:`releases_run_folders`, when that function returns or raises.
Under torchrun only rank 0 claims (and writes); the other ranks' claims hold nothing.
"""

from __future__ import annotations

import contextvars
import errno
import fnmatch
import functools
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import SupportnetError
from .paths import check_output_dir

log = logging.getLogger("supportnet")

#: The lock file inside a claimed folder (kept after the run; it holds the last owner's pid).
LOCK_NAME = ".supportnet.lock"
#: What supportnet runs write into a run folder (glob patterns); ``overwrite=True`` removes these.
RUN_FILES = (
    "config.yaml",
    "metrics.csv",
    "curves.png",
    "checkpoint.pt",
    "final.pt",
    "model.safetensors",
    "summary.json",
    "metrics.jsonl",
    "trace.png",
    "masks-round*.smask",
    "table.md",
    "study.json",
    "ratio.png",
    "dsd-config.yaml",
    "dsd.json",
    "sparse.pt",
    "pruning.pt",
    "planted.json",
    "planted.md",
    "planted.png",
    "solvers.json",
    "solvers.md",
    "check-rip.json",
    "three-layer.json",
)
#: Folders a run writes (``train.loggers=[tensorboard]``); ``overwrite=True`` removes these too, so
#: a new run's events never mix with an old run's.
RUN_DIRS = ("tensorboard",)
#: A temporary of :func:`supportnet.io.atomic_write` or of a mask store (``tempfile.mkstemp`` names).
_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


class RunFolderError(SupportnetError):
    """A run folder that is taken by another run or another process, or cannot be made."""


class RunFolder:
    """A claimed run folder: ``path`` and the lock held on it until :meth:`release`."""

    def __init__(self, path: Path, fd: int | None):
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        """Whether this process still holds the folder's lock."""
        return self._fd is not None

    def release(self) -> None:
        """Give the folder up (closing the lock file releases the ``flock``). Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # pragma: no cover - best effort: a claim nobody released
        try:
            self.release()
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r}, held={self.held})"


_SCOPES: contextvars.ContextVar[list[list[RunFolder]] | None] = contextvars.ContextVar("run_scopes", default=None)


def releases_run_folders(fn: Callable) -> Callable:
    """Decorator: every folder claimed while ``fn`` runs is released when ``fn`` returns or raises.

    ``fit`` is decorated: it claims its folder where it starts writing, and the lock lives
    exactly as long as the call, an exception (a divergence) included.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        scopes = _SCOPES.get()
        if scopes is None:
            scopes = []
            _SCOPES.set(scopes)
        scopes.append([])
        try:
            return fn(*args, **kwargs)
        finally:
            for folder in scopes.pop():
                folder.release()

    return wrapper


def _entries(path: Path) -> list[str]:
    """Names in ``path`` that belong to some run (all but the lock file and stale temporaries)."""
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RunFolderError(f"run folder {path} cannot be listed ({e.strerror or e}); choose another --out") from None
    return [n for n in names if n != LOCK_NAME and not _TMP.match(n)]


def _taken_message(path: Path, names: list[str], resumable: bool) -> str:
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    ours = any(fnmatch.fnmatchcase(n, p) for n in names for p in RUN_FILES + RUN_DIRS)
    cont = f"continue that run with --resume {path}, " if resumable and ours else ""
    what = "another run's files" if ours else "files"
    how = "replace them" if ours else "write beside them"
    return f"run folder {path} already holds {what} ({shown}); {cont}choose a new --out, or pass --overwrite to {how}"


def _foreign(names: list[str], reuse: Iterable[str]) -> list[str]:
    pats = list(reuse)
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in pats)]


def _lock_owner(path: Path) -> str:
    try:
        pid = (path / LOCK_NAME).read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _probe_lock(path: Path) -> None:
    """Refuse if another process holds ``path``'s lock now (takes and drops it at once)."""
    import fcntl

    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunFolderError(_busy_message(path)) from None
    except OSError:
        pass  # a file system without flock: nothing to probe
    finally:
        os.close(fd)


def _busy_message(path: Path) -> str:
    return (
        f"run folder {path} is in use by another supportnet process{_lock_owner(path)}; "
        f"wait for it to finish or choose another --out"
    )


def _other_rank() -> bool:
    """Under torchrun, ranks other than 0 neither write nor own the folder (rank 0 does)."""
    return os.environ.get("RANK", "0") not in ("", "0")


@dataclass(frozen=True)
class FolderUse:
    """How a run uses its folder: the keyword arguments of :func:`check_run_folder` and
    :func:`claim_run_folder`.

    ``resume``: this run continues the one in the folder (its files are this run's).
    ``overwrite``: a new run may replace another run's files (:data:`RUN_FILES` are removed).
    ``reuse``: glob patterns of entries a new run may find and reuse as its own (the finished
    sub-runs of an interrupted convergence study); anything else is another run's.
    ``resumable``: the refusal names ``--resume`` (train, dsd) or not (compare, theory).
    """

    resume: bool = False
    overwrite: bool = False
    reuse: Iterable[str] = ()
    resumable: bool = True

    def taken(self, path: Path) -> list[str]:
        """The entries of ``path`` that are another run's (none where this run may have them)."""
        return [] if self.resume else _foreign(_entries(path), self.reuse)


def check_run_folder(path: str | Path, *, flag: str = "--out", **use) -> Path:
    """What :func:`claim_run_folder` checks, without writing anything (to refuse early); ``use``:
    :class:`FolderUse`. ``flag`` names the option the path came from in a message."""
    how = FolderUse(**use)
    path = check_output_dir(path, flag)
    if path.is_dir() and not _other_rank():
        _probe_lock(path)
        names = [] if how.overwrite else how.taken(path)
        if names:
            raise RunFolderError(_taken_message(path, names, how.resumable))
    return path


def claim_run_folder(path: str | Path, **use) -> RunFolder:
    """Make ``path`` and own it for this run (module docstring); returns the held :class:`RunFolder`.
    ``use``: :class:`FolderUse` (resume, overwrite, reuse, resumable)."""
    import fcntl

    how = FolderUse(**use)
    path = check_output_dir(path)
    if _other_rank():  # torchrun: rank 0 claims and writes; the others hold nothing
        return RunFolder(path, None)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
    except OSError as e:
        raise RunFolderError(f"run folder {path} cannot be made ({e.strerror or e}); choose another --out") from None
    folder = RunFolder(path, fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(_busy_message(path)) from None
        except OSError as e:  # ENOLCK / EOPNOTSUPP: a file system without flock (some network mounts)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            log.warning("run folder %s: the file system does not support locks; not locked", path)
        names = how.taken(path)  # checked under the lock: no other process can fill the folder meanwhile
        if names and not how.overwrite:
            raise RunFolderError(_taken_message(path, names, how.resumable))
        if names:
            _remove_run_files(path)
        _remove_stale_temporaries(path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        folder.release()
        raise
    scopes = _SCOPES.get()
    if scopes:
        scopes[-1].append(folder)
    return folder


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries a killed run left in ``path`` (the lock is ours, so no live writer owns them)."""
    for name in os.listdir(path):
        p = path / name
        if _TMP.match(name) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                log.info("removed %s, left by an interrupted run", p)
            except OSError:
                pass


def _remove_run_files(path: Path) -> None:
    """``--overwrite``: remove the files (:data:`RUN_FILES`) and folders (:data:`RUN_DIRS`) a previous
    run wrote here; nothing else."""
    import shutil

    for name in os.listdir(path):
        p = path / name
        is_file = any(fnmatch.fnmatchcase(name, pat) for pat in RUN_FILES) and (p.is_file() or p.is_symlink())
        is_dir = name in RUN_DIRS and p.is_dir() and not p.is_symlink()
        if not (is_file or is_dir):
            continue
        try:
            if is_dir:
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as e:
            raise RunFolderError(
                f"--overwrite could not remove {p} ({e.strerror or e}); remove it or choose another --out"
            ) from None
