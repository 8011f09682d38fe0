"""Where a data set lives on disk, whether its files verify, and fetching it.

Without ``--data-dir`` a data set is looked up in this order: ``$SUPPORTNET_DATA``,
``~/.cache/supportnet``, ``/usr/share/datasets/<name>`` (where Debian's
``dataset-fashion-mnist`` puts its files). In each place both ``DIR`` and
``DIR/<name>`` are tried. An explicit ``--data-dir`` is the only place looked in:
the set is used from there or refused with what is missing, never silently taken
from another folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .download import download, file_hash
from .registry import DatasetSpec, get_spec


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Candidate folders for data set ``name``, in lookup order (only ``data_dir``'s when given)."""
    if data_dir is not None:
        b = Path(data_dir).expanduser()
        return [b, b / name]
    bases: list[Path] = []
    if os.environ.get("SUPPORTNET_DATA"):
        bases.append(Path(os.environ["SUPPORTNET_DATA"]).expanduser())
    bases.append(Path("~/.cache/supportnet").expanduser())
    out = []
    for b in bases:
        out += [b, b / name]
    out.append(Path("/usr/share/datasets") / name)
    return out


def _has_files(d: Path, spec: DatasetSpec) -> bool:
    if spec.present is not None:
        return d.is_dir() and spec.present(d)
    return all(_find_file(d, f) is not None for r, f in spec.files.items() if r not in spec.optional)


def _find_file(d: Path, fname: str) -> Path | None:
    """``fname`` or, for a ``.gz`` name, its uncompressed form."""
    for cand in (d / fname, d / fname.removesuffix(".gz")):
        if cand.is_file():
            return cand
    return None


def find_root(name: str, data_dir: str | Path | None = None) -> Path:
    """The first folder that holds every file of ``name`` (see the module docstring)."""
    spec = get_spec(name)
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            what = "is not a folder" if d.exists() else "does not exist"
            if os.path.islink(d) and not d.exists():
                what = "is a broken symlink or a symlink loop"
            raise DataError(
                f"data directory {data_dir} {what}; create it and run "
                f"'supportnet data fetch {name} --root {data_dir}', or drop --data-dir"
            )
    for d in search_dirs(name, data_dir):
        if _has_files(d, spec):
            return d
    if data_dir is not None:
        raise DataError(f"data directory {data_dir} {_what_is_missing(Path(data_dir).expanduser(), name, spec)}")
    if not spec.urls and name != "synthetic":  # nothing to fetch: say what the folder needs
        raise DataError(
            f"data set {name!r} not found (looked in {', '.join(str(d) for d in search_dirs(name, data_dir))}); "
            f"pass --data-dir with train/ and val/ (or test/) folders of class folders, as ImageNet is"
        )
    hint = "install Debian's package (apt-get install dataset-fashion-mnist) or " if name == "fashion-mnist" else ""
    raise DataError(
        f"data set {name!r} not found (looked in {', '.join(str(d) for d in search_dirs(name, data_dir))}); "
        f"{hint}run 'supportnet data fetch {name}'"
    )


def _what_is_missing(d: Path, name: str, spec: DatasetSpec) -> str:
    """Why an explicit data folder does not hold ``name``: the files it lacks, and the fix."""
    fix = f"put the missing files there, run 'supportnet data fetch {name} --root {d}', or drop --data-dir"
    if spec.present is not None or not spec.files:
        what = ", ".join(spec.files.values()) or "train/ and val/ (or test/) folders of class folders"
        if not spec.urls:
            fix = "arrange it as ImageNet is, or drop --data-dir"
        return f"does not hold the {name} data set ({what}), nor does {d / name}; {fix}"
    base = max((d, d / name), key=lambda b: sum(_find_file(b, f) is not None for f in spec.files.values()))
    needed = [f for r, f in spec.files.items() if r not in spec.optional]
    missing = [f for f in needed if _find_file(base, f) is None]
    bad = [f for f in missing if os.path.lexists(base / f) or os.path.lexists(base / f.removesuffix(".gz"))]
    what = f"holds {len(needed) - len(missing)} of the {len(needed)} files of {name}: missing {', '.join(missing)}" + (
        f" ({', '.join(bad)}: a broken symlink, a symlink loop or not a file)" if bad else ""
    )
    return f"{what}; {fix}"


def _resolve_files(root: Path, spec: DatasetSpec) -> DatasetSpec:
    files = {}
    for role, fname in spec.files.items():
        p = _find_file(root, fname)
        files[role] = p.name if p is not None else fname
    return DatasetSpec(**{**spec.__dict__, "files": files})


# -- verification and fetching --------------------------------------------------
def verify_file(path: Path, spec: DatasetSpec, official_name: str) -> tuple[bool, str]:
    """Whether ``path`` matches the published md5 or the known digest of its content."""
    md5 = spec.md5.get(official_name)
    if md5 and path.name == official_name and file_hash(path, "md5") == md5:
        return True, "md5 matches the published checksum"
    raw = spec.raw_sha256.get(official_name)
    if raw:
        import gzip
        import hashlib

        h = hashlib.sha256()
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except (OSError, EOFError):
            return False, "corrupt or truncated gzip stream"
        if h.hexdigest() == raw:
            return True, "decompressed content matches the known sha256"
        return False, "content checksum mismatch"
    if md5:
        return False, "md5 does not match the published checksum"
    return False, "no checksum is known for this file"


def check_dataset(name: str, data_dir: str | Path | None = None) -> list[dict]:
    """Report, per file, where it was found and whether it verifies."""
    spec = get_spec(name)
    if name == "synthetic":
        return [{"file": "(generated)", "path": None, "ok": True, "how": "generated in memory"}]
    try:
        root = find_root(name, data_dir)
    except DataError:
        return [{"file": f, "path": None, "ok": False, "how": "not found"} for f in spec.files.values()] or [
            {"file": "train/, val/", "path": None, "ok": False, "how": "not found"}
        ]
    rows = []
    if name == "imagefolder":
        return [
            {
                "file": "train/, val/",
                "path": str(root),
                "ok": True,
                "how": "layout found (image folders have no published checksum)",
            }
        ]
    for role, fname in spec.files.items():
        p = _find_file(root, fname)
        if p is None:
            if role in spec.optional:
                rows.append({"file": fname, "path": None, "ok": True, "how": "optional, absent"})
                continue
            members = {k: v for k, v in spec.member_md5.items()}
            if members and all((root / k).is_file() for k in members):
                for k, md5 in members.items():
                    ok = file_hash(root / k, "md5") == md5
                    rows.append(
                        {
                            "file": k,
                            "path": str(root / k),
                            "ok": ok,
                            "how": "extracted member md5 " + ("matches" if ok else "does NOT match"),
                        }
                    )
                continue
            rows.append({"file": fname, "path": None, "ok": False, "how": "not found"})
            continue
        ok, how = verify_file(p, spec, fname)
        rows.append({"file": fname, "path": str(p), "ok": ok, "how": how})
    return rows


def fetch_dataset(name: str, root: str | Path | None = None, quiet: bool = False, extract: bool = False) -> Path:
    """Download ``name`` into ``root`` (default ``~/.cache/supportnet/<name>``), verified.

    Tarballs are read in place; ``extract=True`` also unpacks them with
    :func:`~supportnet.data.download.safe_extract` (no absolute paths, ``..`` or escaping links).
    """
    spec = get_spec(name)
    if not spec.urls:
        raise DataError(f"data set {name!r} cannot be downloaded ({spec.note or 'no public URL'})")
    dest = Path(root).expanduser() if root else Path("~/.cache/supportnet").expanduser() / name
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot make the data folder {dest} ({e.strerror or e}); choose another --root") from None
    for role, fname in spec.files.items():
        if role in spec.optional:
            continue
        target = dest / fname
        if target.is_file() and verify_file(target, spec, fname)[0]:
            continue
        last: Exception | None = None
        for base in spec.urls:
            try:
                download(base + fname, target, md5=spec.md5.get(fname), quiet=quiet)
                last = None
                break
            except DataError as e:
                last = e
        if last is not None:
            raise last
        if extract and fname.endswith((".tar.gz", ".tgz", ".tar")):
            from .download import safe_extract

            safe_extract(target, dest)
    return dest
