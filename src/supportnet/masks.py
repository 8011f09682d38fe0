"""Per-example multi-layer supports, bit-packed (I-alternation, paper Sec. 4.1).

I-alternation keeps one support per training example ("the instance-wise mask
can be stored or even cached online for small data"). A :class:`MaskStore`
holds, for every example, the concatenated supports of all threshold layers at
exactly one bit per activation, in memory or in a memory-mapped file.

File layout (all integers little-endian)::

    magic    8 bytes   b"SNMASK\\0\\1"
    version  u32
    hlen     u32       total header length in bytes (a multiple of 64)
    meta     JSON      {"n", "shapes", "bits", "row_bytes", "checksum", ...}, space padded
    payload  n * row_bytes bytes; row i = example i, bits in layer order, MSB first

so ``file size == header_nbytes + n * ceil(bits / 8)`` exactly. ``checksum`` is a
BLAKE2b-128 digest of the payload, verified when the store is opened.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import IntegrityError
from .io import fsync_dir, new_file_mode

MAGIC = b"SNMASK\x00\x01"
VERSION = 1
_DIGEST = 16  # BLAKE2b digest size in bytes


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def pack_masks(masks: Sequence[torch.Tensor]) -> np.ndarray:
    """Pack per-layer masks ``(B, *shape_l)`` into rows of bits: ``(B, ceil(bits/8))`` uint8.

    Masks on an accelerator are packed there (:func:`pack_rows`), so 1 bit per activation
    crosses to the host instead of a byte; CPU masks go through ``np.packbits``."""
    b = masks[0].shape[0]
    flat = torch.cat([m.reshape(b, -1) for m in masks], dim=1)
    if flat.device.type != "cpu":
        return pack_rows(flat).cpu().numpy()
    return np.packbits(flat.numpy().astype(np.bool_, copy=False), axis=1)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> int:
    """Number of set bits in a uint8 array (``np.bitwise_count`` where numpy has it)."""
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(x).sum(dtype=np.int64))
    return int(_POPCOUNT[x].sum(dtype=np.int64))


_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' default (big-endian) bit order
_SHIFTS = (7, 6, 5, 4, 3, 2, 1, 0)
_CONST: dict[tuple[str, str], torch.Tensor] = {}


def _const(name: str, device: torch.device) -> torch.Tensor:
    """A small uint8 constant kept on ``device`` (made once: no host-to-device copy per batch)."""
    key = (name, str(device))
    if key not in _CONST:
        _CONST[key] = torch.tensor(_BIT_WEIGHTS if name == "w" else _SHIFTS, dtype=torch.uint8, device=device)
    return _CONST[key]


def pack_rows(flat: torch.Tensor) -> torch.Tensor:
    """``np.packbits(flat, axis=1)`` in torch ops, on ``flat``'s device: ``(B, bits)`` bool ->
    ``(B, ceil(bits/8))`` uint8, the first bit of each byte the most significant."""
    b, bits = flat.shape
    pad = (-bits) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(b, pad)], dim=1)
    return (flat.view(b, -1, 8).to(torch.uint8) * _const("w", flat.device)).sum(-1, dtype=torch.uint8)


def unpack_rows(rows: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows` on ``rows``' device: ``(B, row_bytes)`` uint8 -> ``(B, bits)`` bool."""
    b = rows.shape[0]
    return ((rows.unsqueeze(-1) >> _const("s", rows.device)) & 1).view(b, -1)[:, :bits].bool()


def unpack_masks(rows: np.ndarray, shapes: Sequence[Sequence[int]], device=None) -> list[torch.Tensor]:
    """Inverse of :func:`pack_masks`: ``(B, row_bytes)`` uint8 -> list of ``(B, *shape_l)`` bool.

    For an accelerator ``device`` the packed rows are copied (1 bit per activation) and
    unpacked there; on the CPU ``np.unpackbits`` does it."""
    bits = sum(_numel(s) for s in shapes)
    if device is not None and torch.device(device).type != "cpu":
        flat = unpack_rows(torch.from_numpy(np.ascontiguousarray(rows)).to(device, non_blocking=True), bits)
    else:
        flat = torch.from_numpy(np.unpackbits(rows, axis=1, count=bits).view(np.bool_))
    out, pos = [], 0
    for s in shapes:
        k = _numel(s)
        out.append(flat[:, pos : pos + k].reshape(rows.shape[0], *s))
        pos += k
    return out


def _header_fields(meta, path: Path, fix: str) -> tuple[int, list[tuple[int, ...]], int, int, str]:
    """``n, shapes, bits, row_bytes, checksum`` of a store header, each checked for its type and
    sign: positive integers (not booleans, not floats), at least one layer, a 32-hex checksum."""

    def positive(v) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(v)
        return v

    try:
        if not isinstance(meta, dict) or not isinstance(meta["shapes"], list) or not meta["shapes"]:
            raise ValueError("shapes")
        n, bits, row_bytes = positive(meta["n"]), positive(meta["bits"]), positive(meta["row_bytes"])
        shapes = []
        for sh in meta["shapes"]:
            if not isinstance(sh, list) or not sh:
                raise ValueError(sh)
            shapes.append(tuple(positive(d) for d in sh))
        checksum = meta["checksum"]
        if not isinstance(checksum, str) or len(checksum) != 2 * _DIGEST:
            raise ValueError(checksum)
    except (KeyError, TypeError, ValueError):
        raise IntegrityError(
            f"mask store {path} has a damaged header (a missing, negative or zero size); {fix}"
        ) from None
    if bits != sum(_numel(s) for s in shapes):
        raise IntegrityError(f"mask store {path} has an inconsistent header; {fix}")
    return n, shapes, bits, row_bytes, checksum


class MaskStore:
    """Bit-packed supports of every layer for ``n`` examples, addressed by example index.

    ``MaskStore(n, shapes)`` keeps the payload in memory; ``MaskStore(n, shapes,
    path=...)`` writes it to a memory-mapped temporary file beside ``path`` that
    :meth:`finalize` checksums and renames into place atomically.
    :meth:`MaskStore.open` maps an existing file and verifies it.
    """

    def __init__(self, n: int, shapes: Sequence[Sequence[int]], path: str | Path | None = None):
        if n <= 0:
            raise ValueError(f"a MaskStore needs at least one example, got n={n}")
        self.n = int(n)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.bits = sum(_numel(s) for s in self.shapes)
        self.row_bytes = (self.bits + 7) // 8
        self.path = Path(path) if path is not None else None
        self.checksum = "0" * (2 * _DIGEST)
        self._header = self._make_header()
        self._tmp: str | None = None
        self.readonly = False
        if self.path is None:
            self.payload = np.zeros((self.n, self.row_bytes), dtype=np.uint8)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=str(self.path.parent))
            try:
                os.fchmod(fd, new_file_mode())  # as a plain open() would: the umask, not mkstemp's 0600
            except OSError:
                pass
            os.close(fd)
            with open(self._tmp, "r+b") as f:
                f.truncate(self.header_nbytes + self.payload_nbytes)
            self.payload = np.memmap(
                self._tmp, dtype=np.uint8, mode="r+", offset=self.header_nbytes, shape=(self.n, self.row_bytes)
            )

    # -- geometry --------------------------------------------------------------
    @property
    def header_nbytes(self) -> int:
        return len(self._header)

    @property
    def payload_nbytes(self) -> int:
        return self.n * self.row_bytes

    @property
    def nbytes(self) -> int:
        """Total size: header plus packed payload (the file size, for a file store)."""
        return self.header_nbytes + self.payload_nbytes

    def bits_per_activation(self) -> float:
        return 8.0 * self.nbytes / (self.n * self.bits)

    def _make_header(self) -> bytes:
        meta = json.dumps(
            {
                "n": self.n,
                "shapes": [list(s) for s in self.shapes],
                "bits": self.bits,
                "row_bytes": self.row_bytes,
                "checksum": self.checksum,
                "digest": "blake2b-128",
            },
            separators=(",", ":"),
        ).encode()
        hlen = 16 + len(meta)
        hlen = (hlen + 63) // 64 * 64
        return MAGIC + struct.pack("<II", VERSION, hlen) + meta.ljust(hlen - 16, b" ")

    # -- access ----------------------------------------------------------------
    def _check_index(self, index: torch.Tensor | np.ndarray) -> np.ndarray:
        idx = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"example index out of range for a MaskStore of {self.n} examples")
        return idx

    def write(self, index, masks: Sequence[torch.Tensor]) -> None:
        """Store the supports of the examples ``index`` (masks: one ``(B, *shape)`` per layer)."""
        if self.readonly:
            raise RuntimeError("this MaskStore was opened read-only")
        if [tuple(m.shape[1:]) for m in masks] != self.shapes:
            raise ValueError(f"mask shapes {[tuple(m.shape[1:]) for m in masks]} do not match the store {self.shapes}")
        self.payload[self._check_index(index)] = pack_masks(masks)

    def read(self, index, device=None) -> list[torch.Tensor]:
        """The supports of the examples ``index``: one ``(B, *shape)`` bool tensor per layer."""
        rows = np.ascontiguousarray(self.payload[self._check_index(index)])
        return unpack_masks(rows, self.shapes, device=device)

    def rows(self, index) -> np.ndarray:
        return np.asarray(self.payload[self._check_index(index)])

    def _digest(self) -> str:
        h = hashlib.blake2b(digest_size=_DIGEST)
        step = max(1, (64 << 20) // max(1, self.row_bytes))
        for i in range(0, self.n, step):
            h.update(np.ascontiguousarray(self.payload[i : i + step]).data)
        return h.hexdigest()

    # -- persistence -----------------------------------------------------------
    def finalize(self) -> MaskStore:
        """Record the payload checksum; for a file store, fsync and rename it into place."""
        self.checksum = self._digest()
        self._header = self._make_header()
        if self.path is not None and self._tmp is not None:
            assert isinstance(self.payload, np.memmap)
            self.payload.flush()
            with open(self._tmp, "r+b") as f:
                f.write(self._header)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
            self._tmp = None
            self.payload = np.memmap(
                self.path, dtype=np.uint8, mode="r", offset=self.header_nbytes, shape=(self.n, self.row_bytes)
            )
            self.readonly = True
        return self

    def save(self, path: str | Path) -> Path:
        """Write a (finalized) in-memory store to ``path`` atomically."""
        from .io import atomic_write

        if self.checksum == "0" * (2 * _DIGEST):
            self.finalize()

        def _w(f):
            f.write(self._header)
            step = max(1, (64 << 20) // max(1, self.row_bytes))
            for i in range(0, self.n, step):
                f.write(np.ascontiguousarray(self.payload[i : i + step]).tobytes())

        return atomic_write(path, _w)

    def discard(self) -> None:
        """Drop an unfinished file store's temporary file."""
        if self._tmp is not None:
            self.payload = None  # type: ignore[assignment]
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None

    def __del__(self):  # pragma: no cover - best effort cleanup
        try:
            self.discard()
        except Exception:
            pass

    @classmethod
    def open(cls, path: str | Path, verify: bool = True, in_memory: bool = False) -> MaskStore:
        """Map (or load) a store file, checking magic, version, size and checksum."""
        path = Path(path)
        fix = "delete it to re-estimate the supports"
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(16)
                if len(head) < 16 or head[:8] != MAGIC:
                    raise IntegrityError(f"mask store {path} is not a supportnet mask store (bad magic); {fix}")
                version, hlen = struct.unpack("<II", head[8:16])
                if version != VERSION:
                    raise IntegrityError(
                        f"mask store {path} has version {version}, this supportnet reads version {VERSION}; {fix}"
                    )
                if hlen < 16 or hlen > size or hlen > 1 << 20:
                    raise IntegrityError(f"mask store {path} has a damaged header; {fix}")
                meta = json.loads(f.read(hlen - 16).decode().strip())
        except FileNotFoundError:
            raise IntegrityError(f"mask store {path} does not exist; {fix}") from None
        except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
            raise IntegrityError(f"mask store {path} has a damaged header; {fix}") from None
        store = cls.__new__(cls)
        store.n, store.shapes, store.bits, store.row_bytes, store.checksum = _header_fields(meta, path, fix)
        # every field against the file's real size before any loop or allocation: the payload is
        # n rows of row_bytes >= 1 bytes, so n <= size and the checksum pass is bounded by the file
        if store.row_bytes != (store.bits + 7) // 8:
            raise IntegrityError(f"mask store {path} has an inconsistent header; {fix}")
        store.path, store._tmp, store.readonly = path, None, True
        store._header = store._make_header()
        if len(store._header) != hlen:
            raise IntegrityError(f"mask store {path} has a damaged header; {fix}")
        if size != hlen + store.n * store.row_bytes:
            raise IntegrityError(
                f"mask store {path} is truncated or padded ({size} bytes, expected "
                f"{hlen + store.n * store.row_bytes}); {fix}"
            )
        store.payload = np.memmap(path, dtype=np.uint8, mode="r", offset=hlen, shape=(store.n, store.row_bytes))
        if in_memory:
            store.payload = np.array(store.payload)
        if verify and store._digest() != store.checksum:
            raise IntegrityError(f"mask store {path} fails its checksum (bit flip or partial write); {fix}")
        return store

    def changed_fraction(self, other: MaskStore) -> float:
        """Fraction of mask bits that differ between two stores of the same geometry."""
        if (other.n, other.shapes) != (self.n, self.shapes):
            raise ValueError("mask stores of different geometry cannot be compared")
        diff = 0
        step = max(1, (16 << 20) // max(1, self.row_bytes))
        for i in range(0, self.n, step):
            x = np.bitwise_xor(np.asarray(self.payload[i : i + step]), np.asarray(other.payload[i : i + step]))
            diff += _popcount(x)  # the pad bits at each row's end are zero in both stores
        return diff / (self.n * self.bits)
