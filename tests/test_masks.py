import math
import os

import numpy as np
import pytest
import torch

from supportnet import MaskStore
from supportnet.errors import IntegrityError
from supportnet.masks import pack_masks, pack_rows, unpack_masks, unpack_rows

SHAPES = [(3, 5, 5), (7,), (2, 2, 3)]


def _random_masks(n, shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((n, *s), generator=g) > 0.5 for s in shapes]


def test_pack_unpack_roundtrip():
    masks = _random_masks(9, SHAPES)
    rows = pack_masks(masks)
    bits = sum(math.prod(s) for s in SHAPES)
    assert rows.shape == (9, (bits + 7) // 8) and rows.dtype == np.uint8
    back = unpack_masks(rows, SHAPES)
    for a, b in zip(masks, back):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bits", [1, 7, 8, 9, 64, 1001])
def test_device_packing_matches_numpy(bits):
    """pack_rows (the accelerator path of pack_masks) gives np.packbits' bytes exactly."""
    g = torch.Generator().manual_seed(bits)
    flat = torch.rand(13, bits, generator=g) > 0.5
    assert np.array_equal(pack_rows(flat).numpy(), np.packbits(flat.numpy(), axis=1))
    rows = pack_rows(flat).numpy()
    back = unpack_masks(rows, [(bits,)])[0]
    assert torch.equal(back, flat)
    assert torch.equal(unpack_rows(torch.from_numpy(rows), bits), flat)  # the accelerator path of unpack_masks


@pytest.mark.parametrize("n", [1, 10, 1000])
def test_file_size_is_payload_plus_header(tmp_path, n):
    shapes = [(16, 14, 14), (32, 7, 7), (100,)]
    path = tmp_path / "m.smask"
    store = MaskStore(n, shapes, path=path)
    store.write(torch.arange(n), _random_masks(n, shapes))
    store.finalize()
    bits = 16 * 14 * 14 + 32 * 7 * 7 + 100
    payload = n * math.ceil(bits / 8)
    assert os.path.getsize(path) == store.header_nbytes + payload
    assert store.nbytes == os.path.getsize(path)
    assert store.header_nbytes % 64 == 0 and store.header_nbytes <= 512  # small header


def test_bits_per_activation_at_scale():
    # Fashion-MNIST with convnet-s: 60,000 examples, 40,896 mask bits each.
    store = MaskStore(60000, [(32, 28, 28), (64, 14, 14), (64, 7, 7), (128,)])
    assert store.bits_per_activation() <= 1.01


@pytest.mark.parametrize("where", ["memory", "file"])
def test_write_read_by_index(tmp_path, where):
    n = 50
    store = MaskStore(n, SHAPES, path=tmp_path / "s.smask" if where == "file" else None)
    masks = _random_masks(n, SHAPES, seed=3)
    perm = torch.randperm(n)
    for i in range(0, n, 16):  # written in shuffled batches, read by example index
        idx = perm[i : i + 16]
        store.write(idx, [m[idx] for m in masks])
    store.finalize()
    idx = torch.tensor([4, 0, 49, 17])
    got = store.read(idx)
    for g, m in zip(got, masks):
        assert torch.equal(g, m[idx])
    if where == "memory":
        p = store.save(tmp_path / "saved.smask")
        again = MaskStore.open(p)
        for g, m in zip(again.read(idx), masks):
            assert torch.equal(g, m[idx])


def _written(tmp_path):
    store = MaskStore(20, SHAPES, path=tmp_path / "s.smask")
    store.write(torch.arange(20), _random_masks(20, SHAPES))
    store.finalize()
    return tmp_path / "s.smask", store


def test_open_verifies_checksum_bit_flip(tmp_path):
    path, store = _written(tmp_path)
    data = bytearray(path.read_bytes())
    data[store.header_nbytes + 5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum"):
        MaskStore.open(path)


def test_open_detects_truncation(tmp_path):
    path, _ = _written(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(IntegrityError, match="truncated"):
        MaskStore.open(path)


def test_open_detects_wrong_version_and_magic(tmp_path):
    path, _ = _written(tmp_path)
    data = bytearray(path.read_bytes())
    data[8] = 99
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="version 99"):
        MaskStore.open(path)
    path.write_bytes(b"not a store at all")
    with pytest.raises(IntegrityError, match="magic"):
        MaskStore.open(path)


def test_unfinished_store_leaves_no_file(tmp_path):
    store = MaskStore(10, SHAPES, path=tmp_path / "x.smask")
    store.discard()
    assert list(tmp_path.iterdir()) == []


def test_changed_fraction():
    a, b = MaskStore(10, [(8,)]), MaskStore(10, [(8,)])
    m = _random_masks(10, [(8,)])
    a.write(torch.arange(10), m)
    m2 = [m[0].clone()]
    m2[0][0, :4] = ~m2[0][0, :4]
    b.write(torch.arange(10), m2)
    assert a.changed_fraction(b) == pytest.approx(4 / 80)


def test_changed_fraction_odd_geometry_and_popcount_fallback(monkeypatch):
    """Rows whose bit count is not a multiple of 8 (zero pad bits); the lookup-table popcount
    used where numpy lacks bitwise_count agrees with it."""
    import supportnet.masks as masks

    shapes = [(3, 5), (7,)]  # 22 bits per row
    a, b = MaskStore(40, shapes), MaskStore(40, shapes)
    m = _random_masks(40, shapes)
    flipped = [t.clone() for t in m]
    flipped[0][::3, 1, :] = ~flipped[0][::3, 1, :]  # 14 rows x 5 bits
    flipped[1][5, 6] = ~flipped[1][5, 6]
    a.write(torch.arange(40), m)
    b.write(torch.arange(40), flipped)
    want = (14 * 5 + 1) / (40 * 22)
    assert a.changed_fraction(b) == pytest.approx(want)
    x = np.random.default_rng(0).integers(0, 256, size=(9, 33), dtype=np.uint8)
    direct = int(np.unpackbits(x).sum())
    assert masks._popcount(x) == direct
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert masks._popcount(x) == direct


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by bench/gpu_check.sh)")
def test_store_on_cuda_matches_cpu():
    """The accelerator paths (pack on the device, unpack on the device) store and return the same bits."""
    masks = _random_masks(37, SHAPES)
    cpu, gpu = MaskStore(37, SHAPES), MaskStore(37, SHAPES)
    cpu.write(torch.arange(37), masks)
    gpu.write(torch.arange(37), [m.cuda() for m in masks])
    assert np.array_equal(np.asarray(cpu.payload), np.asarray(gpu.payload))
    idx = torch.tensor([36, 0, 5])
    for a, b in zip(cpu.read(idx), gpu.read(idx, device="cuda")):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu())


@pytest.mark.parametrize("shapes", [SHAPES, [(13,), (2, 3, 5), (1,), (4, 4)]])
def test_packed_read_gives_each_layer_its_bits(shapes):
    """read(packed=True): the rows themselves; each layer's LayerBits (any bit offset, mid-byte
    included) unpacks to the masks read() gives."""
    from supportnet.masks import LayerBits, PackedMasks

    n = 21
    store = MaskStore(n, shapes)
    masks = _random_masks(n, shapes, seed=4)
    store.write(torch.arange(n), masks)
    idx = torch.tensor([20, 3, 3, 0, 11])
    pm = store.read(idx, packed=True)
    assert isinstance(pm, PackedMasks) and len(pm) == len(shapes)
    assert pm.rows.dtype == torch.uint8 and tuple(pm.rows.shape) == (5, store.row_bytes)
    assert np.array_equal(pm.rows.numpy(), store.rows(idx))
    offsets = [0]
    for s in shapes[:-1]:
        offsets.append(offsets[-1] + math.prod(s))
    for lb, m, s, off in zip(pm, masks, shapes, offsets):
        assert isinstance(lb, LayerBits) and lb.offset == off and lb.shape == (5, *s)
        assert torch.equal(lb.unpack(), m[idx])
    for a, b in zip(pm.unpack(), store.read(idx)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("order", ["in-order", "shuffled", "rewritten"])
def test_checksum_taken_as_rows_arrive_equals_full_digest(order):
    """finalize() uses the digest taken while rows arrived in order; any other order falls back
    to reading the payload; the checksum is the same either way."""
    n = 40
    masks = _random_masks(n, SHAPES, seed=6)
    idx = {"in-order": torch.arange(n), "shuffled": torch.randperm(n, generator=torch.Generator().manual_seed(0))}
    store = MaskStore(n, SHAPES)
    seq = idx.get(order, torch.arange(n))
    for i in range(0, n, 16):
        j = seq[i : i + 16]
        store.write(j, [m[j] for m in masks])
    if order == "rewritten":  # rows 0..15 written again after the in-order pass
        store.write(torch.arange(16), [m[:16] for m in masks])
    assert (store._hash is not None) == (order == "in-order")
    full = store._digest()
    assert store.finalize().checksum == full


def test_row_writer_counts_changed_bits():
    from supportnet.masks import RowWriter

    n = 33
    old = MaskStore(n, SHAPES)
    old.write(torch.arange(n), _random_masks(n, SHAPES, seed=1))
    new = MaskStore(n, SHAPES)
    w = RowWriter(new, device="cpu", previous=old)
    masks = _random_masks(n, SHAPES, seed=2)
    for i in range(0, n, 10):
        w.put(torch.arange(i, min(n, i + 10)), [m[i : i + 10] for m in masks])
    w.close()
    assert w.diff > 0 and w.diff / (n * new.bits) == new.changed_fraction(old)


@pytest.mark.parametrize("shapes", [[(2, 4), (3, 8), (5,)], [(3, 5, 5), (7,), (2, 2, 3)], [(8,), (1,)]])
def test_pack_masks_per_layer_equals_packing_the_concatenation(shapes):
    """Layers that start on a byte are packed one by one (no concatenation): the same bytes."""
    masks = _random_masks(9, shapes, seed=11)
    flat = torch.cat([m.reshape(9, -1) for m in masks], 1)
    assert np.array_equal(pack_masks(masks), np.packbits(flat.numpy(), axis=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by bench/gpu_check.sh)")
def test_row_writer_through_pinned_buffers_on_cuda():
    """On CUDA the rows reach the store one batch behind through pinned buffers: the same bytes,
    checksum and change count as packing on the host."""
    from supportnet.masks import RowWriter

    n = 70
    masks = _random_masks(n, SHAPES, seed=12)
    old = MaskStore(n, SHAPES)
    old.write(torch.arange(n), _random_masks(n, SHAPES, seed=13))
    host, dev = MaskStore(n, SHAPES), MaskStore(n, SHAPES)
    wh, wd = RowWriter(host, "cpu", previous=old), RowWriter(dev, "cuda", previous=old)
    for i in range(0, n, 16):
        j = torch.arange(i, min(n, i + 16))
        wh.put(j, [m[j] for m in masks])
        wd.put(j, [m[j].cuda() for m in masks])
    wh.close()
    wd.close()
    assert wd.overlap and not wh.overlap
    assert np.array_equal(host.payload, dev.payload) and wd.diff == wh.diff > 0
    assert host.finalize().checksum == dev.finalize().checksum


def test_device_copy_gathers_the_rows_read_gives_and_is_dropped_on_write():
    """MaskStore.to_device: the rows gathered from the device copy (here a CPU tensor, the path
    that CUDA takes) are the host rows; writing rows drops the copy (it would be stale)."""
    n = 50
    store = MaskStore(n, SHAPES)
    store.write(torch.arange(n), _random_masks(n, SHAPES, seed=3))
    copy = store.to_device("cpu")
    assert copy.shape == (n, store.row_bytes) and np.array_equal(copy.numpy(), store.payload)
    idx = np.array([49, 0, 7, 7, 20])
    assert np.array_equal(store._device_rows(idx, torch.device("cpu")).numpy(), store.payload[idx])
    assert store.to_device("cpu") is copy  # copied once
    store.write(torch.tensor([7]), _random_masks(1, SHAPES, seed=4))
    assert store._device_payload is None


def test_fits_on_device_is_false_off_cuda():
    from supportnet.masks import fits_on_device

    assert not fits_on_device(1, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by bench/gpu_check.sh)")
@pytest.mark.parametrize("on_device", [True, False])
@pytest.mark.parametrize("packed", [True, False])
def test_cuda_read_from_device_copy_or_pinned_staging_matches_cpu(on_device, packed):
    """On CUDA the rows come from the store's device copy or through two pinned buffers used in
    turn; both give the CPU read's bits, step after step (the buffers are reused)."""
    n = 64
    store = MaskStore(n, SHAPES)
    store.write(torch.arange(n), _random_masks(n, SHAPES, seed=5))
    if on_device:
        store.to_device("cuda")
    g = torch.Generator().manual_seed(6)
    reads = []
    for size in (16, 16, 16, 9, 16):  # all read before any is compared: a buffer reused too early shows
        idx = torch.randperm(n, generator=g)[:size]
        torch.cuda._sleep(1_000_000)  # the device busy while the host gathers the next rows
        got = store.read(idx, device="cuda", packed=packed)
        reads.append((idx, got.unpack() if packed else got))
    for idx, got in reads:
        for a, b in zip(store.read(idx), got):
            assert b.device.type == "cuda" and torch.equal(a, b.cpu())
    assert (store._staging is None) == on_device
