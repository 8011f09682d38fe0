"""Reader for the IDX format of MNIST-family data sets (LeCun et al. 1998).

An IDX file is ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian u32 sizes,
then the data, row-major. Files may be gzip-compressed. The reader checks that
the payload is exactly as long as the header says.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


#: A gzip IDX file may expand at most this many times (MNIST-family files: under 10x); a
#: header that declares more is refused before anything is decompressed (a gzip bomb).
MAX_GZIP_RATIO = 200


def _read_exact(f, n: int) -> bytes:
    """Up to ``n`` bytes of ``f`` (fewer only at its end)."""
    chunks, got = [], 0
    while got < n:
        b = f.read(min(n - got, 1 << 24))
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``) into a numpy array, verifying its length.

    The header is read first; the data it declares is checked against the file's size
    (times :data:`MAX_GZIP_RATIO` for gzip) before it is read, and no more than the
    declared length plus one byte is ever decompressed, so a hostile file costs at most
    what its size allows.
    """
    path = Path(path)
    fix = "delete it and fetch it again (supportnet data fetch NAME)"
    try:
        size = path.stat().st_size
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw) if gz else raw
            head = _read_exact(f, 4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _TYPES:
                raise DataError(f"{path} is not an IDX file (bad magic number); {fix}")
            ndim = head[3]
            shape = _read_exact(f, 4 * ndim)
            if ndim == 0 or len(shape) < 4 * ndim:
                raise DataError(f"IDX file {path} has a truncated header; {fix}")
            dims = struct.unpack(f">{ndim}I", shape)
            dtype = np.dtype(_TYPES[head[2]])
            expected = math.prod(dims) * dtype.itemsize  # a Python int: no int64 overflow
            room = size * MAX_GZIP_RATIO if gz else size
            if expected > room:
                kind = f"more than a {size:,}-byte gzip file can hold" if gz else "more than the file holds"
                raise DataError(
                    f"IDX file {path} declares {expected:,} data bytes (dimensions {list(dims)}), {kind}; {fix}"
                )
            body = _read_exact(f, expected + 1)
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist; fetch the data set (supportnet data fetch NAME)") from None
    except (OSError, EOFError, zlib.error):
        raise DataError(f"IDX file {path} is a truncated or corrupt gzip file; {fix}") from None
    if len(body) != expected:
        kind = "truncated" if len(body) < expected else "longer than its header says"
        raise DataError(f"IDX file {path} is {kind} ({len(body)} data bytes, header says {expected}); {fix}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip when the name ends in ``.gz``). Used by tests and tools."""
    path = Path(path)
    codes = {
        np.dtype(np.uint8): 0x08,
        np.dtype(np.int8): 0x09,
        np.dtype(np.int16): 0x0B,
        np.dtype(np.int32): 0x0C,
        np.dtype(np.float32): 0x0D,
        np.dtype(np.float64): 0x0E,
    }
    code = codes[np.dtype(array.dtype)]
    data = (
        bytes([0, 0, code, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.dtype(array.dtype).newbyteorder(">")).tobytes()
    )
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
