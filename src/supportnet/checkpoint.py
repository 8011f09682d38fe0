"""Checkpoint files: one ``torch.save`` of a plain dict, verified on read, cheap to reject.

A supportnet ``.pt`` file is what ``torch.save(payload)`` writes for a plain dict, so that
``torch.load(path, weights_only=True)`` reads it in one step and timm's or Lightning's loaders
find its ``"state_dict"``. One more entry, ``payload["supportnet"]``, names the file's format
version and *kind* (``final``, ``resume``, ...) and holds a SHA-256 *content digest*: the
hash of every tensor's dtype, shape and bytes and of a canonical serialisation of every
other value (type tags, lengths, IEEE-754 bytes for floats), walked in the dict's order.
Reading recomputes it, so a flipped bit in any weight, any number or any name is caught
without a second serialisation: the file is written once and read once, and memory peaks at
one copy of the model (the format before version 2 pickled the payload into bytes and
pickled those again, which doubled both).

Before ``torch.load`` runs, :func:`check_archive` reads the zip's central directory:
``torch.save`` stores its records uncompressed, so an archive with a compressed record, or
whose records declare more bytes than the file holds, is refused unread (a 1.5 MB deflate
bomb otherwise inflates to gigabytes), and a file that is not a zip archive (a legacy
pickle) never reaches the unpickler. ``torch.load`` itself allocates each storage only
after checking it against its record's size, so the cost of rejecting a file is bounded by
its size. Anything that is not what its kind should hold (a list, a non-tensor weight, a
missing key) is a one-line :class:`~supportnet.errors.IntegrityError`.

Files of format 1 (the double serialisation) are still read, through the same checks.

This module holds no part of the paper; it carries the weights (Eq. 9's ``tau`` per layer
included) of the networks the other modules train.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import IntegrityError, SupportnetError
from .io import atomic_write

log = logging.getLogger("supportnet")

FORMAT = 2  #: the format version this supportnet writes
LEGACY_FORMAT = 1  #: the double-serialised format, still read
META = "supportnet"  #: the payload key of the file's own record: format, kind, sha256
MAX_DEPTH = 64  #: nesting deeper than this is not a supportnet payload

#: kind -> (what a person calls it, the keys its payload must hold, the hint when it was wanted)
KINDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "final": (
        "a final model",
        ("state_dict", "config", "metrics", "taus", "arch"),
        "pass a finished run's final.pt (or its folder)",
    ),
    "resume": (
        "a resume checkpoint",
        ("model", "optimizer", "schedule", "epoch", "step", "rng", "config", "metrics"),
        "pass the folder of an unfinished run whose checkpoint.pt 'supportnet train' wrote; "
        "a finished run is not resumed, start a new one",
    ),
    "sparse": (
        "a DSD sparse checkpoint",
        ("state_dict", "config", "keep", "units"),
        "pass RUN/sparse.pt written by 'supportnet dsd'",
    ),
    "pruning": ("a DSD pruning record", ("keep", "units"), "pass RUN/pruning.pt written by 'supportnet dsd'"),
    "compact": (
        "a compact DSD export",
        ("state_dict", "config", "units", "arch", "taus"),
        "pass a file written by 'supportnet export --compact'",
    ),
    "state_dict": (
        "a state_dict export",
        ("state_dict", "config", "arch", "taus"),
        "pass a file written by 'supportnet export --format state_dict'",
    ),
    "other": ("a supportnet file", (), "pass a file written by supportnet"),
}
#: payload keys whose value is a model's state dict: ``{name: tensor}``
STATE_KEYS = ("state_dict", "model")
#: the type of every other required key
TYPES = {
    "config": dict,
    "metrics": list,
    "taus": dict,
    "arch": dict,
    "optimizer": dict,
    "schedule": dict,
    "rng": dict,
    "epoch": int,
    "step": int,
    "keep": dict,
    "units": dict,
}


def describe(kind: str) -> str:
    """What a person calls a file of ``kind`` ("a final model", ...)."""
    return KINDS.get(kind, (f"a {kind!r} file",))[0]


# ----------------------------------------------------------------------------- content digest


def content_digest(payload: Any, kind: str) -> str:
    """The SHA-256 of ``payload`` (tensors' dtype, shape and bytes; everything else canonically).

    Raises ``ValueError`` on a value it cannot serialise canonically (a programming error at
    save time; at load time :func:`load_checkpoint` turns it into an :class:`IntegrityError`).
    """
    h = hashlib.sha256()
    _feed(h, ("supportnet-checkpoint", FORMAT, kind), 0)
    _feed(h, payload, 0)
    return h.hexdigest()


def _tag(h, tag: bytes, body: bytes = b"") -> None:
    h.update(tag + struct.pack("<Q", len(body)) + body)


def _feed(h, x: Any, depth: int) -> None:
    """Hash ``x`` canonically (type tag, length, content); containers in their own order."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(x, torch.Tensor):
        _feed_tensor(h, x)
    elif x is None:
        _tag(h, b"N")
    elif isinstance(x, bool):
        _tag(h, b"B", b"1" if x else b"0")
    elif isinstance(x, int):
        _tag(h, b"I", str(x).encode())
    elif isinstance(x, float):
        _tag(h, b"F", struct.pack("<d", x))
    elif isinstance(x, str):
        _tag(h, b"S", x.encode("utf-8", "surrogatepass"))
    elif isinstance(x, (bytes, bytearray)):
        _tag(h, b"Y", bytes(x))
    elif isinstance(x, dict):
        _tag(h, b"D", str(len(x)).encode())
        for k, v in x.items():
            _feed(h, k, depth + 1)
            _feed(h, v, depth + 1)
    elif isinstance(x, (list, tuple)):  # torch.Size is a tuple
        _tag(h, b"L" if isinstance(x, list) else b"T", str(len(x)).encode())
        for v in x:
            _feed(h, v, depth + 1)
    elif isinstance(x, (torch.dtype, torch.device)):
        _tag(h, b"R", str(x).encode())
    else:
        raise ValueError(f"a value of type {type(x).__name__}")


def _feed_tensor(h, x: torch.Tensor) -> None:
    if x.layout != torch.strided or x.is_quantized or x.device.type == "meta":
        raise ValueError(f"a {x.layout} tensor on {x.device.type}")
    t = x.detach()
    _tag(h, b"X", f"{t.dtype}|{tuple(t.shape)}".encode())
    if t.numel():
        # its bytes in memory order, one tensor at a time (a device tensor is copied to the host)
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)


# ----------------------------------------------------------------------------- writing


def save_checkpoint(path: str | Path, payload: dict, kind: str = "other") -> Path:
    """Write ``payload`` (a dict) as a checkpoint of ``kind``, atomically and with its digest.

    The file is ``torch.save({**payload, "supportnet": {"format", "kind", "sha256"}})``: one
    serialisation, made in memory and written to a temporary file that is renamed into place (``io.atomic_write``).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    if not isinstance(payload, dict) or META in payload:
        raise ValueError(f"a checkpoint payload is a dict without a {META!r} key")
    missing = [k for k in KINDS[kind][1] if k not in payload]
    if missing:
        raise ValueError(f"a {kind} checkpoint needs {missing}")
    record = {META: {"format": FORMAT, "kind": kind, "sha256": content_digest(payload, kind)}}
    # serialised in memory first: torch.save streaming into a file that fills up fails as a
    # RuntimeError from its zip writer, not as the OSError a full disk gives a plain write
    buf = io.BytesIO()
    torch.save({**payload, **record}, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


# ----------------------------------------------------------------------------- reading


def check_archive(f: BinaryIO, size: int, name: str) -> None:
    """Refuse, before unpickling, what ``torch.save`` never writes (see the module docstring).

    ``f``: the file, opened for binary reading; ``size``: its size in bytes.
    """
    head = f.read(4)
    f.seek(0)
    if not head.startswith(b"PK"):
        what = "a legacy pickle" if head[:1] == b"\x80" else "not a zip archive"
        raise IntegrityError(
            f"{name} is {what}, not a PyTorch checkpoint of the zip format 'torch.save' writes; "
            f"pass a file written by supportnet (re-save a legacy file with a current torch.save)"
        )
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise IntegrityError(
            f"{name} is truncated or not a supportnet checkpoint (damaged zip archive: {str(e)[:60]}); "
            f"use another checkpoint or retrain"
        ) from None
    finally:
        f.seek(0)
    total = 0
    for i in infos:
        if i.compress_type != zipfile.ZIP_STORED:
            raise IntegrityError(
                f"{name} holds a compressed record ({i.filename[:60]!r}), which 'torch.save' never writes; "
                f"refusing to inflate it: pass a file written by supportnet"
            )
        total += i.file_size
        if i.compress_size != i.file_size or i.header_offset + i.file_size > size or total > size:
            raise IntegrityError(
                f"{name} declares more bytes than its {size:,} (a damaged or forged zip archive); "
                f"use another checkpoint or retrain"
            )
    if not any(i.filename.endswith("data.pkl") for i in infos):
        raise IntegrityError(f"{name} is a zip archive but not a PyTorch checkpoint (no data.pkl); pass a .pt file")


def _torch_load(f: BinaryIO, size: int, name: str) -> Any:
    check_archive(f, size, name)
    try:
        with warnings.catch_warnings():  # torch's warnings about odd pickles: our error says it in one line
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
        detail = str(e).strip().splitlines()[0][:80] if str(e).strip() else ""
        raise IntegrityError(
            f"{name} is truncated or not a supportnet checkpoint ({type(e).__name__}"
            f"{': ' + detail if detail else ''}); use another checkpoint or retrain"
        ) from None


def read_checkpoint(path: str | Path) -> tuple[dict, str, int]:
    """Load and verify any supportnet checkpoint: ``(payload, kind, format)``.

    The payload is returned without its ``"supportnet"`` record. Every failure is one
    :class:`IntegrityError` (or a :class:`SupportnetError` for a path that is no file).
    """
    path = Path(path)
    if not path.exists():
        raise SupportnetError(f"checkpoint {path} does not exist; pass the path of a run's checkpoint.pt or final.pt")
    if not path.is_file():
        raise SupportnetError(f"checkpoint {path} is not a file; pass the path of a run's checkpoint.pt or final.pt")
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            obj = _torch_load(f, size, str(path))
    except OSError as e:
        raise SupportnetError(f"cannot read {path}: {e.strerror or e}; check the file's permissions") from None
    if not isinstance(obj, dict):
        raise IntegrityError(
            f"{path} holds a {type(obj).__name__}, not a supportnet checkpoint's dict; "
            f"pass a file written by supportnet"
        )
    if _is_legacy(obj):
        return _read_legacy(obj, path)
    meta = obj.get(META)
    if not (isinstance(meta, dict) and isinstance(meta.get("kind"), str) and isinstance(meta.get("sha256"), str)):
        keys = ", ".join(sorted(map(str, obj))[:5])
        raise IntegrityError(
            f"{path} is a PyTorch file but not a supportnet checkpoint (keys: {keys or 'none'}); "
            f"pass a file written by supportnet"
        )
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise IntegrityError(
            f"checkpoint {path} has format version {fmt!r}, this supportnet reads versions "
            f"{LEGACY_FORMAT} and {FORMAT}; use the supportnet release that wrote it"
        )
    kind = meta["kind"]
    payload = {k: v for k, v in obj.items() if k != META}
    try:
        ok = content_digest(payload, kind) == meta["sha256"]
    except (ValueError, RecursionError) as e:
        raise IntegrityError(f"{path} holds {e}, which no supportnet checkpoint does; pass a file it wrote") from None
    if not ok:
        raise IntegrityError(f"checkpoint {path} fails its checksum (corrupt file); use another checkpoint or retrain")
    _check_shape(payload, kind, path)
    return payload, kind, fmt


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...] | None = None) -> dict:
    """Load and verify a checkpoint (``weights_only=True``); ``kind``: the kind(s) wanted.

    A file of another kind is refused with a message naming both, e.g. "RUN/final.pt is a
    final model, not a resume checkpoint".
    """
    payload, got, _ = read_checkpoint(path)
    if kind:
        expect_kind(path, got, kind)
    return payload


def expect_kind(path: str | Path, got: str, kind: str | tuple[str, ...]) -> None:
    """Raise the one-line error for a file of kind ``got`` where ``kind`` (one or several) was wanted."""
    wanted = (kind,) if isinstance(kind, str) else tuple(kind)
    if got not in wanted:
        raise IntegrityError(f"{path} is {describe(got)}, not {describe(wanted[0])}; {KINDS[wanted[0]][2]}")


def _check_shape(payload: dict, kind: str, path: Path) -> None:
    """The payload holds what its kind should: its keys, and tensors wherever weights belong."""
    if kind not in KINDS:
        raise IntegrityError(
            f"{path} is a supportnet file of unknown kind {kind[:40]!r}; use the supportnet release that wrote it"
        )
    missing = [k for k in KINDS[kind][1] if k not in payload]
    if missing:
        raise IntegrityError(f"{path} is {describe(kind)} without {', '.join(missing)}; use another file or retrain")
    for key in KINDS[kind][1]:
        want = TYPES.get(key)
        if want and not (isinstance(payload[key], want) and not isinstance(payload[key], bool)):
            raise IntegrityError(
                f"{path}: its {key!r} is of type {type(payload[key]).__name__}, not {want.__name__}; "
                f"use another checkpoint or retrain"
            )
    for key in STATE_KEYS:
        sd = payload.get(key)
        if key in KINDS[kind][1] and not _is_state_dict(sd):
            raise IntegrityError(
                f"{path}: its {key!r} is not a map of names to tensors; use another checkpoint or retrain"
            )
    taus = payload.get("taus")
    if "taus" in KINDS[kind][1] and not (
        isinstance(taus, dict)
        and all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for k, v in taus.items()
        )
    ):
        raise IntegrityError(f"{path}: its 'taus' is not a map of layer names to finite numbers; use another file")


def _is_state_dict(sd: Any) -> bool:
    return isinstance(sd, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())


# ----------------------------------------------------------------------------- format 1 (read only)


def _is_legacy(obj: dict) -> bool:
    return META not in obj and "body" in obj and "format" in obj and set(obj) <= {"format", "sha256", "body"}


def _read_legacy(wrapper: dict, path: Path) -> tuple[dict, str, int]:
    """A format-1 file: ``{"format": 1, "sha256", "body": uint8 tensor of another torch.save}``."""
    fmt = wrapper["format"]
    if fmt != LEGACY_FORMAT:
        raise IntegrityError(
            f"checkpoint {path} has format version {fmt!r}, this supportnet reads versions "
            f"{LEGACY_FORMAT} and {FORMAT}; use the supportnet release that wrote it"
        )
    body = wrapper["body"]
    if not (isinstance(body, torch.Tensor) and body.dtype == torch.uint8 and body.dim() == 1):
        raise IntegrityError(f"{path} is a damaged format-1 checkpoint (its body is no byte tensor); retrain")
    raw = body.numpy().tobytes()
    if hashlib.sha256(raw).hexdigest() != wrapper.get("sha256"):
        raise IntegrityError(f"checkpoint {path} fails its checksum (corrupt file); use another checkpoint or retrain")
    payload = _torch_load(io.BytesIO(raw), len(raw), str(path))
    if not isinstance(payload, dict):
        raise IntegrityError(
            f"{path} holds a {type(payload).__name__}, not a supportnet checkpoint's dict; "
            f"pass a file written by supportnet"
        )
    kind = _legacy_kind(payload)
    for key in STATE_KEYS:
        if key in payload and kind in ("final", "resume", "sparse", "compact") and not _is_state_dict(payload[key]):
            raise IntegrityError(f"{path}: its {key!r} is not a map of names to tensors; use another checkpoint")
    return payload, kind, LEGACY_FORMAT


def _legacy_kind(p: dict) -> str:
    if "optimizer" in p and "model" in p:
        return "resume"
    if p.get("format") == "supportnet-compact-1":
        return "compact"
    if "keep" in p:
        return "sparse" if "state_dict" in p else "pruning"
    if "state_dict" in p and "metrics" in p:
        return "final"
    return "other"
