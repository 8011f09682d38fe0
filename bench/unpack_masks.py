"""Unpacking stored supports on the CPU: which routine, and what applying the mask costs.

    python bench/unpack_masks.py [--batch 128] [--repeats 50] [--threads N]

Rows of convnet-s's supports on 28x28 inputs (40,896 bits an example, ``np.packbits`` order, as a
:class:`~supportnet.masks.MaskStore` holds them) are unpacked to one byte per bit by

* ``numpy-unpackbits``: ``np.unpackbits(rows, axis=1, count=bits)`` viewed as bool (the store's routine);
* ``lut-gather-numpy``: a 256-entry table of uint64 words (the 8 bytes of each byte value) gathered by byte;
* ``lut-gather-torch``: the same table gathered by torch indexing;
* ``int64-words``: bitwise ops on 64-bit words (each byte spread over 8 bytes by a multiply and masks);

each checked bit for bit against ``np.unpackbits``. Then the first layer's mask
(128x32x28x28) is applied to activations as a bool, a uint8 and a float32 multiplier (the
products are the same numbers; the time is not), and the rows are packed again from the
layers' bool masks, concatenated first or layer by layer. Median milliseconds; JSON in
bench/out/unpack_masks.json. A micro-benchmark on a shared machine: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from supportnet.masks import pack_masks

OUT = Path(__file__).resolve().parent / "out"
SHAPES = [(32, 28, 28), (64, 14, 14), (64, 7, 7), (128,)]  # convnet-s's threshold layers

_LUT8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # (256, 8): MSB first
_LUT64 = np.ascontiguousarray(_LUT8).view(np.uint64).reshape(256)
_LUT64_T = torch.from_numpy(_LUT64.view(np.int64).copy())
_SPREAD = np.uint64(0x0101010101010101)
_PICK = np.uint64(0x0102040810204080)  # byte k (little-endian) keeps bit 7 - k
_ROUND = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)


def numpy_unpackbits(rows: np.ndarray, bits: int) -> np.ndarray:
    return np.unpackbits(rows, axis=1, count=bits).view(np.bool_)


def lut_gather_numpy(rows: np.ndarray, bits: int) -> np.ndarray:
    return _LUT64[rows].view(np.uint8)[:, :bits].view(np.bool_)


def lut_gather_torch(rows: np.ndarray, bits: int) -> np.ndarray:
    t = _LUT64_T[torch.from_numpy(rows).long()]
    return t.view(torch.uint8)[:, :bits].view(torch.bool).numpy()


def int64_words(rows: np.ndarray, bits: int) -> np.ndarray:
    w = (rows.astype(np.uint64) * _SPREAD) & _PICK  # byte k of each word: the byte's bit 7-k, in place
    w = ((w + _ROUND) & _HIGH) >> np.uint64(7)  # any set bit of a byte -> 1 in that byte
    return w.view(np.uint8)[:, :bits].view(np.bool_)


ROUTINES = {
    "numpy-unpackbits": numpy_unpackbits,
    "lut-gather-numpy": lut_gather_numpy,
    "lut-gather-torch": lut_gather_torch,
    "int64-words": int64_words,
}


def _offsets():
    pos = 0
    for s in SHAPES:
        yield pos, s
        pos += int(np.prod(s))


def timed(f, repeats: int) -> float:
    f()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    bits = sum(int(np.prod(s)) for s in SHAPES)
    rng = np.random.default_rng(0)
    rows = np.packbits(rng.random((a.batch, bits)) < 0.5, axis=1)
    want = numpy_unpackbits(rows, bits)
    res: dict = {
        "machine": f"{platform.machine()} torch {torch.__version__} numpy {np.__version__} "
        f"threads {torch.get_num_threads()}",
        "batch": a.batch,
        "bits_per_example": bits,
        "unpack_ms": {},
        "apply_ms": {},
    }
    for name, f in ROUTINES.items():
        if not np.array_equal(f(rows, bits), want):
            raise SystemExit(f"{name} does not give np.unpackbits' bits")
        res["unpack_ms"][name] = round(timed(lambda f=f: f(rows, bits), a.repeats), 4)
    k = int(np.prod(SHAPES[0]))
    m = torch.from_numpy(want)[:, :k].reshape(a.batch, *SHAPES[0])  # the store's strided view
    x = torch.relu(torch.randn(a.batch, *SHAPES[0]))
    factors = {"bool": m, "uint8": m.view(torch.uint8), "float32": m.float()}
    ref = x * m
    ops = {name: (lambda fm=fm: x * fm) for name, fm in factors.items()}
    ops["uint8-to-float32-then-multiply"] = lambda: x * m.view(torch.uint8).float()
    ops["bool-to-float32-conversion"] = lambda: m.float()
    for fm in factors.values():
        assert torch.equal(x * fm, ref)
    times = {name: [] for name in ops}
    for _ in range(a.repeats):  # interleaved, so that load drift hits every form alike
        for name, f in ops.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    res["apply_ms"] = {name: round(statistics.median(v) * 1e3, 4) for name, v in times.items()}
    # packing (the estimation pass): the concatenated bool masks, or each byte-aligned layer alone
    masks = [torch.from_numpy(want[:, o : o + int(np.prod(s))]).reshape(a.batch, *s) for o, s in _offsets()]
    cat = lambda: np.packbits(torch.cat([q.reshape(a.batch, -1) for q in masks], 1).numpy(), axis=1)
    assert np.array_equal(cat(), pack_masks(masks)) and np.array_equal(cat(), rows)
    res["pack_ms"] = {
        "cat-then-packbits": round(timed(cat, a.repeats), 4),
        "per-layer-packbits (pack_masks)": round(timed(lambda: pack_masks(masks), a.repeats), 4),
    }
    res["fastest_unpack"] = min(res["unpack_ms"], key=res["unpack_ms"].get)
    OUT.mkdir(exist_ok=True)
    (OUT / "unpack_masks.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
