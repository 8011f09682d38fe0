"""Verified downloads: progress bar, checksum, atomic rename, safe extraction."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from ..errors import DataError
from ..io import new_file_mode, write_error


def file_hash(path: str | Path, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | Path, md5: str | None = None, quiet: bool = False, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` atomically and verify its MD5 before it is used.

    The file is written to a temporary name beside ``dest`` and renamed only
    once it verifies; a failed download or checksum leaves any existing
    ``dest`` untouched and removes only the temporary file.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=str(dest.parent))
        os.fchmod(fd, new_file_mode())  # the umask, as a plain open() would; not mkstemp's 0600
    except OSError as e:
        raise write_error(dest, e) from None
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https/http URLs
            except Exception as e:  # noqa: BLE001
                raise DataError(
                    f"could not download {url} ({e}); check the network, or copy the file to {dest} by hand"
                ) from None
            total = int(resp.headers.get("Content-Length") or 0) or None
            from tqdm import tqdm

            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=quiet) as bar:

                def read() -> bytes:
                    try:
                        return resp.read(1 << 16)
                    except OSError as e:  # the network, not the disk
                        raise DataError(f"download of {url} was interrupted ({e}); retry") from None

                for block in iter(read, b""):
                    out.write(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None:
            got = file_hash(tmp, "md5")
            if got != md5:
                raise DataError(
                    f"download of {url} failed its checksum (md5 {got}, expected {md5}); "
                    f"retry, or fetch the file by hand and place it at {dest}"
                )
        os.replace(tmp, dest)
    except OSError as e:  # a full disk or a vanished folder while writing: one line, the temporary removed
        raise write_error(dest, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _inside(target: Path, name: str) -> bool:
    dest = (target / name).resolve()
    return not os.path.isabs(name) and (str(dest).startswith(str(target) + os.sep) or dest == target)


def safe_extract(archive: str | Path, target: str | Path) -> list[str]:
    """Extract a tar or zip archive, refusing absolute paths, ``..`` and links that leave ``target``."""
    target = Path(target).resolve()
    names = []
    import zipfile

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                mode = (info.external_attr >> 16) & 0o170000
                if not _inside(target, info.filename) or "\\" in info.filename:
                    raise DataError(
                        f"archive {archive} holds a path that leaves the target folder "
                        f"({info.filename!r}); refusing to extract it: get the archive from the "
                        f"official source"
                    )
                if mode == 0o120000:  # a symbolic link stored in the zip
                    raise DataError(
                        f"archive {archive} holds a link that leaves the target folder "
                        f"({info.filename!r}); refusing to extract it"
                    )
                names.append(info.filename)
            z.extractall(target)
        return names
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            dest = (target / m.name).resolve()
            if os.path.isabs(m.name) or not str(dest).startswith(str(target) + os.sep) and dest != target:
                raise DataError(
                    f"archive {archive} holds a path that leaves the target folder ({m.name!r}); "
                    f"refusing to extract it: get the archive from the official source"
                )
            if m.issym() or m.islnk():
                link = (dest.parent / m.linkname).resolve() if m.issym() else (target / m.linkname).resolve()
                if not str(link).startswith(str(target) + os.sep):
                    raise DataError(
                        f"archive {archive} holds a link that leaves the target folder "
                        f"({m.name!r} -> {m.linkname!r}); refusing to extract it"
                    )
            if m.isdev():
                raise DataError(f"archive {archive} holds a device file ({m.name!r}); refusing to extract it")
            names.append(m.name)
        tar.extractall(target, members=members, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(
            target, members=members
        )  # noqa: S202 - members were checked above
    return names
