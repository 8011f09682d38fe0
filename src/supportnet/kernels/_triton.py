"""The Triton kernels of :mod:`supportnet.kernels` (imported only when they run: importing
this module imports ``triton``).

Every kernel sees the activations ``q`` of shape ``(B, *unit)`` as ``(B, U)`` rows in memory
order (any dense layout: contiguous or channels_last): element ``(n, p)`` lives at
``n * U + p``. The packed supports are in the :class:`~supportnet.masks.MaskStore` row layout
(the layers' C-order flattening, most significant bit first), so the instance kernels map a
memory position ``p`` to its C-order unit index ``u`` through three (size, C-order stride)
pairs (``e1, e2, e3`` / ``l1, l2, l3``; ``IDENT`` when the two orders agree).

Paper: Eq. 9 (``eta*(q; tau)``), Eq. 13 (a fixed support, ``gated``), Eq. 39-41 (the batch rule).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _unit_index(p, e2, e3, l1, l2, l3, IDENT: tl.constexpr):
    """C-order unit index of memory position ``p`` within one example."""
    if IDENT:
        u = p
    else:
        u = (p // (e2 * e3)) * l1 + ((p // e3) % e2) * l2 + (p % e3) * l3
    return u


@triton.jit
def _support_bit(bits_ptr, n, row_stride, bit_off, u, ok):
    """The stored support bit of unit ``u`` of example ``n`` (``np.packbits`` order), as int32 0/1."""
    b = bit_off + u
    byte = tl.load(bits_ptr + n.to(tl.int64) * row_stride + (b >> 3), mask=ok, other=0).to(tl.int32)
    return (byte >> (7 - (b & 7))) & 1


@triton.jit
def batch_stats_kernel(q_ptr, part_ptr, tot_ptr, B, U, rows_per, tau, VOTE: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 1 of a batch support: per unit, the rule's statistic over this program's rows.

    Grid ``(cdiv(U, BLOCK), splits)``. ``part[s, u]``: energy ``sum relu_tau(q)^2`` (or the vote
    count ``sum 1[q > tau]``) over the rows of split ``s``; ``tot[s * grid0 + pid0]``: the sum of
    this program's block, from which pass 2 takes the layer's mean without another pass."""
    pu = tl.program_id(0)
    ps = tl.program_id(1)
    offs = pu * BLOCK + tl.arange(0, BLOCK)
    ok = offs < U
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    n0 = ps * rows_per
    for i in range(0, rows_per):
        n = n0 + i
        lm = ok & ((offs * 0 + n) < B)  # (a block-shaped mask: the interpreter wants one)
        q = tl.load(q_ptr + n.to(tl.int64) * U + offs, mask=lm, other=0.0).to(tl.float32)
        if VOTE:
            acc += tl.where(q > tau, 1.0, 0.0)
        else:
            x = tl.where(q > tau, q, 0.0)
            acc += x * x
    tl.store(part_ptr + ps.to(tl.int64) * U + offs, acc, mask=ok)
    tl.store(tot_ptr + ps * tl.num_programs(0) + pu, tl.sum(acc, axis=0))


@triton.jit
def batch_apply_kernel(
    q_ptr,
    out_ptr,
    m_ptr,
    part_ptr,
    tot_ptr,
    B,
    U,
    splits,
    n_tot,
    rows_per,
    tau,
    beta,
    RULE: tl.constexpr,  # 0 energy-rel, 1 energy, 2 vote
    BLOCK: tl.constexpr,
    TBLOCK: tl.constexpr,
):
    """Pass 2 of a batch support: the mask from pass 1's statistics, and ``out = relu_tau(q) * m``.

    Grid ``(cdiv(U, BLOCK), cdiv(B, rows_per))``; the programs of the first row chunk also write
    the mask ``m`` (uint8, one per unit)."""
    pu = tl.program_id(0)
    pb = tl.program_id(1)
    offs = pu * BLOCK + tl.arange(0, BLOCK)
    ok = offs < U
    stat = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, splits):
        stat += tl.load(part_ptr + s * U + offs, mask=ok, other=0.0)
    if RULE == 0:
        tacc = tl.zeros([TBLOCK], dtype=tl.float32)
        for j in range(0, n_tot, TBLOCK):
            t = j + tl.arange(0, TBLOCK)
            tacc += tl.load(tot_ptr + t, mask=t < n_tot, other=0.0)
        thr = beta * (tl.sum(tacc, axis=0) / U)
        m = stat > thr
    elif RULE == 1:
        m = stat > beta
    else:
        m = stat * 2.0 > B
    if pb == 0:
        tl.store(m_ptr + offs, m.to(tl.uint8), mask=ok)
    n0 = pb * rows_per
    for i in range(0, rows_per):
        n = n0 + i
        lm = ok & ((offs * 0 + n) < B)  # (a block-shaped mask: the interpreter wants one)
        ptr = n.to(tl.int64) * U + offs
        q = tl.load(q_ptr + ptr, mask=lm, other=0.0)
        out = tl.where(m & (q.to(tl.float32) > tau), q, 0.0)
        tl.store(out_ptr + ptr, out.to(out_ptr.dtype.element_ty), mask=lm)


@triton.jit
def instance_fwd_kernel(
    q_ptr,
    out_ptr,
    bits_ptr,
    part_ptr,
    U,
    row_stride,
    bit_off,
    tau,
    e2,
    e3,
    l1,
    l2,
    l3,
    PEN: tl.constexpr,
    IDENT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``out = relu_tau(q) * m`` with ``m`` read from the packed rows, and with ``PEN`` this
    program's share of the consistency penalty ``sum where(m, 0, relu(q - tau))^2``.

    Grid ``(cdiv(U, BLOCK), B)``; ``part[n * grid0 + pid0]`` receives the penalty partial."""
    pu = tl.program_id(0)
    n = tl.program_id(1)
    p = pu * BLOCK + tl.arange(0, BLOCK)
    ok = p < U
    ptr = n.to(tl.int64) * U + p
    q = tl.load(q_ptr + ptr, mask=ok, other=0.0)
    qf = q.to(tl.float32)
    bit = _support_bit(bits_ptr, n, row_stride, bit_off, _unit_index(p, e2, e3, l1, l2, l3, IDENT), ok)
    on = bit != 0
    out = tl.where(on & (qf > tau), q, 0.0)
    tl.store(out_ptr + ptr, out.to(out_ptr.dtype.element_ty), mask=ok)
    if PEN:
        over = tl.where(on, 0.0, tl.maximum(qf - tau, 0.0))
        tl.store(part_ptr + n * tl.num_programs(0) + pu, tl.sum(over * over, axis=0))


@triton.jit
def gated_bwd_kernel(
    g_ptr,
    grad_ptr,
    src_ptr,
    bits_ptr,
    gpen_ptr,
    U,
    row_stride,
    bit_off,
    tau,
    pen_scale,
    e2,
    e3,
    l1,
    l2,
    l3,
    FROM_BITS: tl.constexpr,
    PEN: tl.constexpr,
    IDENT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Backward of both nodes. Without ``FROM_BITS`` ``src`` is the forward output and the
    gradient passes where it is non-zero (``threshold_backward``). With ``FROM_BITS`` ``src`` is
    ``q``: the gradient passes where the stored bit is set and ``q > tau``; with ``PEN`` the
    penalty's term ``where(m, 0, relu(q - tau)) * gpen * pen_scale`` is added in the same pass.

    Grid ``(cdiv(U, BLOCK), B)``."""
    pu = tl.program_id(0)
    n = tl.program_id(1)
    p = pu * BLOCK + tl.arange(0, BLOCK)
    ok = p < U
    ptr = n.to(tl.int64) * U + p
    grad = tl.load(grad_ptr + ptr, mask=ok, other=0.0).to(tl.float32)
    s = tl.load(src_ptr + ptr, mask=ok, other=0.0).to(tl.float32)
    if FROM_BITS:
        bit = _support_bit(bits_ptr, n, row_stride, bit_off, _unit_index(p, e2, e3, l1, l2, l3, IDENT), ok)
        on = bit != 0
        g = tl.where(on & (s > tau), grad, 0.0)
        if PEN:
            c = tl.load(gpen_ptr).to(tl.float32) * pen_scale
            g += tl.where(on, 0.0, tl.maximum(s - tau, 0.0)) * c
    else:
        g = tl.where(s > 0.0, grad, 0.0)
    tl.store(g_ptr + ptr, g.to(g_ptr.dtype.element_ty), mask=ok)
