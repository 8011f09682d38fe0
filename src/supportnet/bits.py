"""Supports as bits: packing and unpacking masks at one bit per activation.

A support (paper Eq. 12) is a bool per activation. I-alternation keeps one per training example
(Sec. 4.1), so it is packed eight to a byte: each example's row holds every threshold layer's
mask in layer order, C order within a layer, the first bit of each byte the most significant
(``np.packbits``' order). :class:`~supportnet.masks.MaskStore` keeps such rows for a data set;
:class:`PackedMasks` and :class:`LayerBits` hand a batch of them to the layers and the fused
kernels without unpacking. This module knows nothing of stores, layers or kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def pack_masks(masks: Sequence[torch.Tensor]) -> np.ndarray:
    """Pack per-layer masks ``(B, *shape_l)`` into rows of bits: ``(B, ceil(bits/8))`` uint8.

    Masks on an accelerator are packed there (:func:`pack_rows`), so 1 bit per activation
    crosses to the host instead of a byte; CPU masks go through ``np.packbits``."""
    b = masks[0].shape[0]
    if masks[0].device.type == "cpu" and all(m[0].numel() % 8 == 0 for m in masks[:-1]):
        # every layer starts on a byte: pack each into its columns, without concatenating the masks first
        sizes = [m[0].numel() for m in masks]
        out = np.empty((b, (sum(sizes) + 7) // 8), dtype=np.uint8)
        pos = 0
        for m, k in zip(masks, sizes):
            nb = (k + 7) // 8
            out[:, pos : pos + nb] = np.packbits(m.reshape(b, -1).numpy().astype(np.bool_, copy=False), axis=1)
            pos += nb
        return out
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


def _to_device(rows: np.ndarray, device) -> torch.Tensor:
    """Host rows as a tensor on ``device``; to an accelerator through pinned memory, without
    blocking the host (the copy overlaps with work already queued)."""
    t = torch.from_numpy(rows)
    if device is None or torch.device(device).type == "cpu":
        return t
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


#: A finished store is copied to a GPU once and its rows gathered there (:meth:`MaskStore.to_device`)
#: when it takes at most this share of the device's memory and half of what is free.
DEVICE_SHARE = 0.10


def fits_on_device(nbytes: int, device) -> bool:
    """Whether a store payload of ``nbytes`` is kept on ``device`` (a CUDA device; see :data:`DEVICE_SHARE`)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    free, total = torch.cuda.mem_get_info(dev)
    free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)  # cached by torch, reusable
    return nbytes <= DEVICE_SHARE * total and 2 * nbytes <= free


def _device_key(device) -> torch.device:
    """``device`` with its index (``cuda`` -> ``cuda:<current>``), so that one device has one key."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


class _Staging:
    """Two pinned host buffers used in turn for the rows a step copies to a GPU: the rows are
    gathered straight into one (no pageable copy, no pinning per step) while the copy out of
    the other may still run; a buffer is refilled only after its last copy has finished."""

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] = []
        self.done: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def gather(self, payload: np.ndarray, idx: np.ndarray, device) -> torch.Tensor:
        b, width = len(idx), payload.shape[1]
        if not self.buffers or self.buffers[0].shape[0] < b or self.buffers[0].shape[1] != width:
            for ev in self.done:
                if ev is not None:
                    ev.synchronize()
            self.buffers = [torch.empty((b, width), dtype=torch.uint8, pin_memory=True) for _ in "ab"]
            self.done = [None, None]
        i, self.turn = self.turn, self.turn ^ 1
        if self.done[i] is not None:
            self.done[i].synchronize()  # type: ignore[union-attr]
        buf = self.buffers[i][:b]
        np.take(payload, idx, axis=0, out=buf.numpy(), mode="clip")
        rows = buf.to(device, non_blocking=True)
        self.done[i] = torch.cuda.Event()
        self.done[i].record(torch.cuda.current_stream(device))  # type: ignore[union-attr] # (the copy's stream)
        return rows


def unpack_masks(rows: np.ndarray, shapes: Sequence[Sequence[int]], device=None) -> list[torch.Tensor]:
    """Inverse of :func:`pack_masks`: ``(B, row_bytes)`` uint8 -> list of ``(B, *shape_l)`` bool.

    For an accelerator ``device`` the packed rows are copied (1 bit per activation) and
    unpacked there; on the CPU ``np.unpackbits`` does it."""
    bits = sum(_numel(s) for s in shapes)
    if device is not None and torch.device(device).type != "cpu":
        flat = unpack_rows(_to_device(np.ascontiguousarray(rows), device), bits)
    else:
        flat = torch.from_numpy(np.unpackbits(rows, axis=1, count=bits).view(np.bool_))
    return _split_masks(flat, shapes)


def _split_masks(flat: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """``(B, bits)`` bool -> one ``(B, *shape)`` view per layer."""
    out, pos = [], 0
    for s in shapes:
        k = _numel(s)
        out.append(flat[:, pos : pos + k].reshape(flat.shape[0], *s))
        pos += k
    return out


class LayerBits:
    """One layer's supports inside packed rows: ``rows`` ``(B, row_bytes)`` uint8 (the
    :class:`MaskStore` row layout, on any device), the layer's bits starting at bit ``offset`` of
    each row, in C order of ``unit_shape``. ``shape`` is the mask's ``(B, *unit_shape)``, so a
    layer can check it as it checks a bool mask; :meth:`unpack` gives that bool mask."""

    __slots__ = ("rows", "offset", "unit_shape")

    def __init__(self, rows: torch.Tensor, offset: int, unit_shape: Sequence[int]):
        self.rows, self.offset, self.unit_shape = rows, int(offset), tuple(int(d) for d in unit_shape)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.rows.shape[0], *self.unit_shape))

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def unpack(self) -> torch.Tensor:
        """The ``(B, *unit_shape)`` bool mask, unpacked on the rows' device."""
        k = _numel(self.unit_shape)
        first, last = self.offset // 8, (self.offset + k + 7) // 8
        flat = unpack_rows(self.rows[:, first:last], 8 * (last - first))
        lo = self.offset - 8 * first
        return flat[:, lo : lo + k].reshape(self.shape)


def put_bits(bits: LayerBits, mask: torch.Tensor, replace: bool = False) -> None:
    """Write the bool ``mask`` ``(B, *unit_shape)`` into its place in ``bits.rows`` (a CPU tensor):
    what the CPU record kernel writes, for a layer it does not take. The bits there are OR-ed into
    (they must be zero), or with ``replace`` cleared first."""
    b, pad = mask.shape[0], bits.offset % 8
    flat = mask.reshape(b, -1).cpu().numpy().astype(np.bool_, copy=False)
    if pad:
        flat = np.concatenate([np.zeros((b, pad), dtype=np.bool_), flat], axis=1)
    packed = np.packbits(flat, axis=1)
    first = bits.offset // 8
    rows = bits.rows.numpy()[:, first : first + packed.shape[1]]
    if replace:  # this layer's bits of those bytes, and only those, set to 0
        ones = np.ones(flat.shape[1], dtype=np.bool_)
        ones[:pad] = False
        rows &= ~np.packbits(ones)
    rows |= packed


class PackedMasks:
    """Every layer's supports for a batch as packed rows (what :meth:`MaskStore.read` hands the
    layers with ``packed=True``): ``rows`` ``(B, row_bytes)`` uint8 on the device, and each
    layer's unit shape and first bit. Indexing and iteration give :class:`LayerBits`;
    :meth:`unpack` gives the bool masks :func:`unpack_masks` gives."""

    def __init__(self, rows: torch.Tensor, shapes: Sequence[Sequence[int]]):
        self.rows = rows
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.offsets = [0]
        for s in self.shapes[:-1]:
            self.offsets.append(self.offsets[-1] + _numel(s))

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> LayerBits:
        return LayerBits(self.rows, self.offsets[i], self.shapes[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def unpack(self) -> list[torch.Tensor]:
        return [lb.unpack() for lb in self]
