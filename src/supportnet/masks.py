"""Per-example multi-layer supports in a store, bit-packed (I-alternation, paper Sec. 4.1).

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
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .bits import (  # noqa: F401  (LayerBits, fits_on_device, put_bits: re-exported, the bits' public names)
    LayerBits,
    PackedMasks,
    _device_key,
    _numel,
    _popcount,
    _split_masks,
    _Staging,
    _to_device,
    fits_on_device,
    pack_masks,
    pack_rows,
    put_bits,
    unpack_masks,
    unpack_rows,
)
from .errors import IntegrityError
from .io import atomic_write, fsync_dir, new_file_mode
from .kernels import cpu

MAGIC = b"SNMASK\x00\x01"
VERSION = 1
_DIGEST = 16  # BLAKE2b digest size in bytes


def _changed_bits(rows: np.ndarray, payload: np.ndarray, idx: np.ndarray) -> int:
    """Bits that differ between ``rows`` and the rows ``idx`` of ``payload`` (a consecutive run of
    rows is read in place, not gathered; the CPU kernel counts in one pass where it is built)."""
    k = len(idx)
    run = k > 0 and idx[-1] - idx[0] == k - 1 and (k == 1 or bool((np.diff(idx) == 1).all()))
    old = payload[idx[0] : idx[0] + k] if run else payload[idx]
    n = cpu.xor_popcount(rows, old)
    return n if n is not None else _popcount(np.bitwise_xor(rows, old))


class RowWriter:
    """Writes a batch's supports into a :class:`MaskStore` (the estimation pass).

    On CUDA the masks are packed on the device and copied into pinned host buffers without
    blocking; each batch's rows are written into the store (and hashed, and compared with
    ``previous``) while the device computes the next batch. Elsewhere they are packed and
    written at once. :meth:`close` writes the last batch. ``diff``: the bits that differ from
    ``previous`` in the rows written (the change between rounds, without another pass)."""

    def __init__(self, store: MaskStore, device=None, previous: MaskStore | None = None):
        self.store, self.previous, self.diff = store, previous, 0
        self.overlap = device is not None and torch.device(device).type == "cuda"
        self._pending: tuple | None = None
        self._buffers: list[torch.Tensor] = []

    def put(self, index, masks: Sequence[torch.Tensor]) -> None:
        if not self.overlap:
            self._commit(self.store._check_index(index), pack_masks(masks))
            return
        b = masks[0].shape[0]
        rows = pack_rows(torch.cat([m.reshape(b, -1) for m in masks], dim=1))
        if not self._buffers or self._buffers[0].shape[0] < b:  # two pinned buffers, used in turn
            self._drain()
            self._buffers = [torch.empty((b, self.store.row_bytes), dtype=torch.uint8, pin_memory=True) for _ in "ab"]
        buf = self._buffers[0][:b]
        buf.copy_(rows, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._buffers.reverse()  # the other buffer next time (this one is pending until drained)
        self._drain()
        self._pending = (self.store._check_index(index), buf, done)

    def put_rows(self, index, rows: np.ndarray) -> None:
        """Write already packed rows ``(B, row_bytes)`` (the CPU kernels record them packed)."""
        self._drain()
        self._commit(self.store._check_index(index), rows)

    def _drain(self) -> None:
        if self._pending is not None:
            idx, buf, done = self._pending
            self._pending = None
            done.synchronize()
            self._commit(idx, buf.numpy())

    def _commit(self, idx: np.ndarray, rows: np.ndarray) -> None:
        if self.previous is not None:  # the pad bits at each row's end are zero in both
            self.diff += _changed_bits(rows, self.previous.payload, idx)
        self.store.write_rows(idx, rows)

    def close(self) -> None:
        self._drain()


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

    _device_payload: torch.Tensor | None = None  # to_device(): the payload on a GPU, read there
    _device_key: torch.device | None = None
    _staging: _Staging | None = None  # CUDA reads of a host payload: pinned buffers used in turn

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
        # the payload's digest, taken as rows arrive in order (write_rows), so that finalize
        # need not read the payload again; None once rows arrive out of order
        self._hash: hashlib.blake2b | None = hashlib.blake2b(digest_size=_DIGEST)
        self._hashed = 0
        self.changed = float("nan")  # fraction of bits changed from the previous round's store (RowWriter)
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
        """Bytes stored (header included) per activation, in bits: 1.0 plus the header's share."""
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
        if [tuple(m.shape[1:]) for m in masks] != self.shapes:
            raise ValueError(f"mask shapes {[tuple(m.shape[1:]) for m in masks]} do not match the store {self.shapes}")
        self.write_rows(index, pack_masks(masks))

    def write_rows(self, index, rows: np.ndarray) -> None:
        """Store already packed rows ``(B, row_bytes)`` uint8 of the examples ``index``."""
        if self.readonly:
            raise RuntimeError("this MaskStore was opened read-only")
        if rows.shape != (len(index), self.row_bytes) or rows.dtype != np.uint8:
            raise ValueError(f"rows {rows.shape} ({rows.dtype}) for {len(index)} examples of {self.row_bytes} bytes")
        idx = self._check_index(index)
        self.payload[idx] = rows
        self._device_payload = self._device_key = None  # a copy on a GPU is stale now
        if self._hash is not None:  # rows in order from the last hashed one: hash them now, cache-hot
            k = len(idx)
            if (
                k
                and idx[0] == self._hashed
                and idx[-1] == self._hashed + k - 1
                and (k == 1 or (np.diff(idx) == 1).all())
            ):
                self._hash.update(np.ascontiguousarray(rows).data)
                self._hashed += k
            elif k:
                self._hash = None

    def read(
        self, index, device=None, packed: bool = False, out: np.ndarray | None = None
    ) -> list[torch.Tensor] | PackedMasks:
        """The supports of the examples ``index``: one ``(B, *shape)`` bool tensor per layer, or
        with ``packed`` the rows themselves on ``device`` (:class:`PackedMasks`, 1 bit per
        activation; the fused kernels of :mod:`supportnet.kernels` read them there). ``out``: a
        ``(B, row_bytes)`` uint8 array the rows are gathered into (reused step after step; the CPU
        only: on an accelerator the rows come from :meth:`to_device`'s copy or pinned buffers)."""
        idx = self._check_index(index)
        if device is not None and torch.device(device).type != "cpu":
            rows_dev = self._device_rows(idx, torch.device(device))
            if packed:
                return PackedMasks(rows_dev, self.shapes)
            return _split_masks(unpack_rows(rows_dev, self.bits), self.shapes)
        if out is not None:
            rows = np.take(self.payload, idx, axis=0, out=out, mode="clip")  # (checked: "raise" copies twice)
        else:
            rows = np.ascontiguousarray(self.payload[idx])
        if packed:
            return PackedMasks(torch.from_numpy(rows), self.shapes)
        return unpack_masks(rows, self.shapes)

    def _device_rows(self, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        """The rows ``idx`` on an accelerator: gathered there from :meth:`to_device`'s copy when
        there is one, else gathered on the host into pinned memory and copied without blocking."""
        if self._device_payload is not None and self._device_key == _device_key(device):
            index = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
            if device.type == "cuda":  # a pinned index is copied without waiting for the queued work
                index = index.pin_memory()
            return self._device_payload.index_select(0, index.to(device, non_blocking=True))
        if device.type != "cuda":
            return _to_device(np.ascontiguousarray(self.payload[idx]), device)
        if self._staging is None:
            self._staging = _Staging()
        return self._staging.gather(self.payload, idx, device)

    def to_device(self, device) -> torch.Tensor:
        """Copy the payload to ``device`` once (in 64 MiB pieces); :meth:`read` for that device then
        gathers the rows there, with no host work per step. Writing rows drops the copy."""
        device = _device_key(device)
        if self._device_payload is None or self._device_key != device:
            dst = torch.empty((self.n, self.row_bytes), dtype=torch.uint8, device=device)
            for i, rows in self._pieces():
                dst[i : i + len(rows)].copy_(torch.from_numpy(rows))
            self._device_payload, self._device_key = dst, device
        return self._device_payload

    def drop_device_copy(self) -> None:
        """Free :meth:`to_device`'s copy."""
        self._device_payload = self._device_key = None

    def rows(self, index) -> np.ndarray:
        """The packed rows ``(len(index), row_bytes)`` of the examples ``index``, as stored."""
        return np.asarray(self.payload[self._check_index(index)])

    def _pieces(self):
        """``(first row, rows)`` of the payload in contiguous pieces of about 64 MiB."""
        step = max(1, (64 << 20) // max(1, self.row_bytes))
        for i in range(0, self.n, step):
            yield i, np.ascontiguousarray(self.payload[i : i + step])

    def _digest(self) -> str:
        h = hashlib.blake2b(digest_size=_DIGEST)
        for _, rows in self._pieces():
            h.update(rows.data)
        return h.hexdigest()

    # -- persistence -----------------------------------------------------------
    def finalize(self) -> MaskStore:
        """Record the payload checksum; for a file store, fsync and rename it into place."""
        done = self._hash is not None and self._hashed == self.n
        self.checksum = self._hash.hexdigest() if done else self._digest()  # type: ignore[union-attr]
        self._hash = None
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
        store._hash, store._hashed, store.changed = None, 0, float("nan")
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
