"""Fused support kernels in Triton, used on CUDA (paper Eq. 9, 13 and 39-41).

Two autograd nodes replace the torch code of :class:`~supportnet.layers.HardThreshold` for the
``gated`` application (``z = m * relu_tau(q)``, tau >= 0) when the activations live on a CUDA
device and ``triton`` is importable (``pip install 'supportnet[gpu]'``):

* :func:`gated_batch`: B-alternation's support (Eq. 39-41). Pass 1 reads ``q`` once and writes
  the rule's per-unit statistic (energy ``sum_n relu_tau(q)^2`` in float32, or the vote count)
  and per-block sums (the layer mean of ``energy-rel``); pass 2 turns them into the mask and
  writes ``out = relu_tau(q) * m``. Backward is one pass (``threshold_backward`` on ``out``).
* :func:`gated_instance`: I-alternation's stored support, read straight from the packed
  :class:`~supportnet.masks.MaskStore` rows (1 bit per activation, never unpacked to bytes),
  with the support-consistency penalty ``mean(where(m, 0, relu(q - tau))^2)`` summed in the
  same pass. Backward recomputes the mask from the bits and adds the penalty's term in the
  same pass; it saves ``q`` and the rows (without the penalty, ``out`` only, like ``relu``).

On the CPU the same two nodes, and the estimation pass's packing, are C with OpenMP
(:mod:`supportnet.kernels.cpu`, built on first use). The Triton kernels run on CPU tensors only
under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests check them against the
torch reference on a machine without a GPU. ``SUPPORTNET_KERNELS=0`` switches both off.

The activations may be any dense layout (contiguous or channels_last, 2-D to 4-D); others,
and code traced by ``torch.compile``, take the torch path (the CPU kernels are custom ops there,
which a traced step runs). The first use of each kernel variant in a process runs a self-check
against the torch nodes on the device (:func:`trusted`); a variant that fails to compile or
disagrees stays off, with one warning, and the torch code runs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import threading

import torch

from ..bits import LayerBits
from ..support import _GatedBatch, _GatedInstance, batch_support, masked_node
from . import cpu, cpu_ops  # noqa: F401  (cpu_ops: the CPU kernels' torch.library ops, registered)
from .common import ENV, ENV_CHOICES, Geometry, geometry, switched_on  # noqa: F401  (the package's names)

log = logging.getLogger("supportnet")

BLOCK = 1024  # units per program (tests pass smaller blocks)
RULE_CODES = {"energy-rel": 0, "energy": 1, "vote": 2}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` is installed and imports (checked once; imports it)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is "not available"
        return False
    return True


def enabled(device) -> bool:
    """Whether the layers use the fused kernels for activations on ``device``: a CUDA device
    with ``triton`` importable, unless ``SUPPORTNET_KERNELS=0``."""
    return torch.device(device).type == "cuda" and switched_on() and triton_available()


def packed_supports(device) -> bool:
    """Whether the layers on ``device`` read stored supports packed (:class:`~supportnet.masks.PackedMasks`):
    on CUDA with the Triton kernels, on the CPU with the C kernels of :mod:`supportnet.kernels.cpu`."""
    if torch.device(device).type == "cpu":
        return cpu.enabled()
    return enabled(device)


def usable(q: torch.Tensor) -> bool:
    """Whether the layers take the kernel path for these activations."""
    return (
        enabled(q.device)
        and q.dtype in _DTYPES
        and not torch.compiler.is_compiling()
        and q.numel() > 0
        and geometry(q) is not None
    )


_CHECKS: dict[tuple, str | None] = {}  # trusted(): per kernel variant, None (passed) or why it is off


def trusted(q: torch.Tensor, kind: str, rule: str = "energy-rel", penalty: bool = False) -> bool:
    """Whether the kernel variant the layers would run for ``q`` passed its self-check on ``q``'s
    device and dtype. The first use of each variant in a process (``kind`` "batch" with its
    ``rule``, or "instance" with or without the ``penalty``; contiguous or not) runs it forward and
    backward on a small input against the torch nodes of :mod:`supportnet.layers`. A variant that
    fails to compile or to launch, or disagrees (masks and outputs must be equal, gradients within
    the dtype's tolerance), is left off for the process with one warning, and the layers run the
    torch code: a GPU, driver or triton on which the kernels misbehave costs speed, never results.
    The check runs in a thread of its own (none of the caller's autograd, autocast or checkpoint
    context reaches it); during CUDA graph capture an unchecked variant is not used (nor checked)."""
    g = geometry(q)
    variant = rule if kind == "batch" else ("with the penalty" if penalty else "without the penalty")
    key = (str(q.device), q.dtype, kind, variant, g is not None and g.ident)
    if key not in _CHECKS:
        if q.is_cuda and torch.cuda.is_current_stream_capturing():
            return False
        _CHECKS[key] = reason = _run_apart(_self_check, q.device, q.dtype, kind, rule if kind == "batch" else penalty,
                                           key[4])  # fmt: skip
        if reason is not None:
            log.warning(
                "supportnet: the fused %s kernel (%s, %s, %s) failed its self-check on %s (%s); the torch code runs "
                "instead (SUPPORTNET_KERNELS=0 skips the kernels and this check)", kind, variant,
                "contiguous" if key[4] else "channels_last", q.dtype, q.device, reason,
            )  # fmt: skip
    return _CHECKS[key] is None


def _run_apart(fn, *args):
    """``fn(*args)`` in a new thread (grad mode, autocast and saved-tensor hooks are per thread)."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(fn(*args)), name="supportnet-kernel-check")
    t.start()
    t.join()
    return box[0] if box else "the check itself failed"


def _self_check(device, dtype, kind: str, variant, ident: bool) -> str | None:
    """None when the variant agrees with the torch node on a small input (32 examples of 1,152
    units: more than one block of units and of rows), else what went wrong."""
    cuda = torch.device(device).type == "cuda"
    try:
        with torch.cuda.device(device) if cuda else contextlib.nullcontext():
            got = _check_run(device, dtype, kind, variant, ident, fused=True)
            want = _check_run(device, dtype, kind, variant, ident, fused=False)
            if cuda:
                torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001 - a compile or launch failure is a reason to stay off
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    for name, a, b in zip(("support", "output", "penalty", "gradient"), got, want):
        if a is None:
            continue
        exact = name in ("support", "output")
        if not (torch.equal(a, b) if exact else torch.allclose(a.float(), b.float(), **tol)):
            return f"its {name} differs from the torch code's"
    return None


def _check_run(device, dtype, kind: str, variant, ident: bool, fused: bool) -> tuple:
    """``(support, output, penalty, gradient)`` of one variant on the check's input (None where
    the variant has none), by the kernel (``fused``) or by the torch node of layers.py."""

    tau, g = 0.25, torch.Generator().manual_seed(0)
    q0 = torch.randn((32, 16, 9, 8), generator=g).to(dtype)
    q = (q0 if ident else q0.contiguous(memory_format=torch.channels_last)).to(device).requires_grad_()
    w = torch.randn(q0.shape, generator=g).to(device)
    pen = m = None
    if kind == "batch":
        if fused:
            out, m = GatedBatch.apply(q, tau, variant, 0.5)
        else:
            out, m = _GatedBatch.apply(q, tau, lambda a, x: batch_support(a, tau, variant, 0.5, x=x))
    else:
        rows = torch.randint(0, 256, (32, 2 + q0[0].numel() // 8), generator=g, dtype=torch.uint8).to(device)
        bits = LayerBits(rows, 3, tuple(q0.shape[1:]))
        if fused:
            out, pen = GatedInstance.apply(q, rows, 3, tau, variant)
        else:
            out, pen = _GatedInstance.apply(q, bits.unpack(), tau, variant)
        pen = pen if variant else None
    loss = (out.float() * w).sum() + (pen.float() if pen is not None else 0)
    loss.backward()
    return m, out.detach(), None if pen is None else pen.detach(), q.grad


@functools.lru_cache(maxsize=64)
def _tau_in(tau: float, dtype: torch.dtype) -> float:
    """``tau`` rounded to ``dtype``: torch compares bf16/fp16 activations with a Python number in
    that dtype, so the kernels (which compare in float32) must use the rounded threshold."""
    return float(torch.tensor(tau, dtype=dtype).item())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _same_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` laid out as ``ref`` (a copy only when the strides differ)."""
    if t.stride() == ref.stride() and t.dtype == ref.dtype:
        return t
    return torch.empty_like(ref).copy_(t)


def batch_forward(
    q: torch.Tensor, tau: float, rule: str, beta: float, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, m)``: the batch support ``m`` (bool, ``q.shape[1:]``) of ``rule`` and
    ``out = relu_tau(q) * m``, in two passes over ``q``. No autograd (see :func:`gated_batch`)."""
    from . import _triton as k

    g = geometry(q)
    if g is None:
        raise ValueError(f"activations of shape {tuple(q.shape)} and strides {q.stride()} are not dense")
    b, u, bl = q.shape[0], g.units, block or BLOCK
    n_u = _cdiv(u, bl)
    splits = max(1, min(_cdiv(1024, n_u), _cdiv(b, 4)))
    rows1 = _cdiv(b, splits)
    splits = _cdiv(b, rows1)
    part = torch.empty((splits, u), dtype=torch.float32, device=q.device)
    tot = torch.empty(splits * n_u, dtype=torch.float32, device=q.device)
    t = _tau_in(float(tau), q.dtype)
    code = RULE_CODES[rule]
    k.batch_stats_kernel[(n_u, splits)](q, part, tot, b, u, rows1, t, VOTE=code == 2, BLOCK=bl)
    out = torch.empty_like(q)
    m = torch.empty_strided(q.shape[1:], q.stride()[1:], dtype=torch.uint8, device=q.device)
    rows2 = min(b, 16)
    k.batch_apply_kernel[(n_u, _cdiv(b, rows2))](
        q, out, m, part, tot, b, u, splits, splits * n_u, rows2, t, float(beta), RULE=code, BLOCK=bl, TBLOCK=256
    )
    return out, m.view(torch.bool)


def instance_forward(
    q: torch.Tensor, rows: torch.Tensor, bit_off: int, tau: float, penalty: bool, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, pen)``: ``out = relu_tau(q) * m`` with ``m`` read from the packed ``rows``
    (``(B, row_bytes)`` uint8, this layer's bits from ``bit_off``) and, with ``penalty``, the
    consistency penalty ``mean(where(m, 0, relu(q - tau))^2)`` (float32; else a zero). No autograd."""
    from . import _triton as k

    g = geometry(q)
    if g is None:
        raise ValueError(f"activations of shape {tuple(q.shape)} and strides {q.stride()} are not dense")
    b, bl = q.shape[0], block or BLOCK
    n_u = _cdiv(g.units, bl)
    out = torch.empty_like(q)
    part = torch.empty(b * n_u if penalty else 1, dtype=torch.float32, device=q.device)
    k.instance_fwd_kernel[(n_u, b)](
        q, out, rows, part, g.units, rows.stride(0), int(bit_off), _tau_in(float(tau), q.dtype),
        g.e2, g.e3, g.l1, g.l2, g.l3, PEN=bool(penalty), IDENT=g.ident, BLOCK=bl,
    )  # fmt: skip
    pen = part.sum() / q.numel() if penalty else torch.zeros((), dtype=torch.float32, device=q.device)
    return out, pen


def gated_backward(
    grad: torch.Tensor,
    src: torch.Tensor,
    rows: torch.Tensor | None = None,
    bit_off: int = 0,
    tau: float = 0.0,
    gpen: torch.Tensor | None = None,
    pen_scale: float = 0.0,
    block: int | None = None,
) -> torch.Tensor:
    """The gradient of both nodes with respect to ``q``. Without ``rows``, ``src`` is the forward
    output (the gradient passes where it is positive); with ``rows``, ``src`` is ``q`` and the
    mask comes from the bits, plus ``where(m, 0, relu(q - tau)) * gpen * pen_scale`` with ``gpen``."""
    from . import _triton as k

    g = geometry(src)
    assert g is not None
    grad = _same_layout(grad, src)
    b, bl = src.shape[0], block or BLOCK
    out = torch.empty_like(src)
    from_bits = rows is not None
    k.gated_bwd_kernel[(_cdiv(g.units, bl), b)](
        out, grad, src, rows if from_bits else src, gpen if gpen is not None else src, g.units,
        rows.stride(0) if from_bits else 0, int(bit_off), _tau_in(float(tau), src.dtype), float(pen_scale),
        g.e2, g.e3, g.l1, g.l2, g.l3, FROM_BITS=from_bits, PEN=from_bits and gpen is not None, IDENT=g.ident,
        BLOCK=bl,
    )  # fmt: skip
    return out


GatedBatch = masked_node(
    "GatedBatch",
    """``(out, m)`` of :func:`batch_forward` as an autograd node; saves ``out`` only.""",
    lambda q, tau, rule, beta: batch_forward(q, tau, rule, beta),  # (looked up at each call)
    lambda g, out: gated_backward(g, out),
)


class GatedInstance(torch.autograd.Function):
    """``(out, pen)`` of :func:`instance_forward` as an autograd node. With the penalty it saves
    ``q`` and the rows (the penalty's gradient needs ``q`` where the support is off, and ``out``
    is zero there); without, ``out`` only, as relu does (the next layer keeps it anyway)."""

    @staticmethod
    def forward(ctx, q, rows, bit_off, tau, penalty):  # type: ignore[override]
        out, pen = instance_forward(q, rows, bit_off, tau, penalty)
        ctx.save_for_backward(*((q, rows) if penalty else (out,)))
        ctx.bit_off, ctx.tau, ctx.penalty, ctx.numel = bit_off, tau, penalty, q.numel()
        return out, pen

    @staticmethod
    def backward(ctx, grad, grad_pen):  # type: ignore[override]
        if not ctx.penalty:  # the gradient passes where out > 0, i.e. where m and q > tau
            (out,) = ctx.saved_tensors
            return gated_backward(grad, out), None, None, None, None
        q, rows = ctx.saved_tensors
        gpen = grad_pen if grad_pen is not None else None
        g = gated_backward(grad, q, rows, ctx.bit_off, ctx.tau, gpen, 2.0 / ctx.numel)
        return g, None, None, None, None


def gated_batch(q: torch.Tensor, tau: float, rule: str, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B-alternation's fused support: ``(relu_tau(q) * m, m)`` with ``m`` the batch rule's support."""
    return GatedBatch.apply(q, tau, rule, beta)


def gated_instance(q: torch.Tensor, bits, tau: float, penalty: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """I-alternation's fused stored support: ``(relu_tau(q) * m, pen)`` with ``m`` read from
    ``bits`` (a :class:`~supportnet.masks.LayerBits`) and ``pen`` the consistency penalty."""
    return GatedInstance.apply(q, bits.rows, bits.offset, tau, penalty)
