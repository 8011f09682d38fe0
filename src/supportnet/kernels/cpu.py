"""Fused support kernels for the CPU: ``cpu.c``, compiled on first use, called through ctypes.

What the Triton kernels do on CUDA, these do on the CPU (paper Eq. 9, 13 and 39-41), each in
one OpenMP pass over a layer's activations per direction where torch needs several:

* :func:`gated_batch`: B-alternation's batch support. The rule's statistic is summed as the
  activations are read, the support decided, and ``out = relu_tau(q) * m`` written; backward is
  torch's ``threshold_backward`` on ``out`` (what relu's backward is).
* :func:`gated_instance`: I-alternation's stored support, read from the packed
  :class:`~supportnet.masks.MaskStore` rows (never unpacked to a bool tensor), with the
  consistency penalty summed in the same pass. For the penalty's gradient it keeps only the
  positions where the stored support is off and ``q > tau`` and ``q - tau`` there
  (:class:`PenaltyTerms`), not ``q``: backward is ``threshold_backward`` on ``out`` plus those
  few terms, one pass over what the next layer's backward has just read.
* :func:`record`: the estimation pass's free output and the packed support, written straight
  into the store's row layout.

Masks and outputs are exactly the torch code's (``layers._GatedBatch``, ``_GatedInstance`` and
``record`` mode), gradients too, NaN included (tau 0 passes it on, as relu; tau > 0 drops it);
the sums (the batch rule's energy, the penalty) are taken in another order, so they differ in
float32 rounding, and a unit whose energy ties the rule's threshold to the last bit may be
decided the other way. The results do not depend on the thread count. A second derivative
through the penalty is refused (``once_differentiable``).

Built with the C compiler (``$CC``, else ``cc``) into ``$SUPPORTNET_CACHE/kernels`` (default
``~/.cache/supportnet/kernels``) under a hash of the source, the flags, the compiler and the
CPU, once per machine (about 0.4 s); written atomically and checked (SHA-256, ABI number) when
loaded. Without a compiler, or with ``SUPPORTNET_KERNELS=0``, the layers run their torch code.
OpenMP comes from the ``libgomp`` torch itself loaded, so the kernels share torch's threads.

Traced by ``torch.compile`` or ``torch.export``, the same C code runs as ``torch.library`` custom
ops (:mod:`supportnet.kernels.cpu_ops`), with fake implementations and autograd formulas, so a
compiled step gives the eager result; eager calls go straight to the library.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .common import ENV, geometry, switched_on  # SUPPORTNET_KERNELS, shared with the Triton kernels

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu.c")
ABI = 7  # cpu.c's SN_ABI
FLAGS = ("-O3", "-march=native", "-std=c11", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC")
GROUP = 16  # examples summed together (float32) by the batch rule before the groups are added
RULE_CODES = {"energy-rel": 0, "energy": 1, "vote": 2}
_lock = threading.Lock()
_status: dict[str, str] = {}

_P, _I64, _F, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "sn_batch_fwd": [_P, _P, _P, _P, _I64, _I64, _I64, _F, _F, _INT, _INT],
    "sn_inst_fwd": [_P, _P, _P, _I64, _I64, _I64, _I64, _F, _P, _P, _P, _P, _P, _P, _INT],
    "sn_gather_rows": [_P, _I64, _P, _P, _I64, _P, _INT],
    "sn_inst_terms_bwd": [_P, _P, _P, _P, _I64, _I64, _F, _INT],
    "sn_record": [_P, _P, _P, _I64, _I64, _I64, _I64, _F, _INT],
    "sn_xor_popcount": [_P, _P, _I64],
    "sn_count_above": [_P, _I64, _F, _INT],
}
_RESTYPES = {"sn_xor_popcount": ctypes.c_int64, "sn_count_above": ctypes.c_int64, "sn_inst_fwd": ctypes.c_int64}


def cache_dir() -> Path:
    return Path(os.environ.get("SUPPORTNET_CACHE") or "~/.cache/supportnet").expanduser() / "kernels"


def _compiler() -> list[str] | None:
    """The C compiler's command (``$CC``, which may carry arguments such as ``ccache gcc``), else ``cc``."""
    try:
        cmd = shlex.split(os.environ.get("CC") or "cc")
    except ValueError:
        return None
    path = shutil.which(cmd[0]) if cmd else None
    return [path, *cmd[1:]] if path else None


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f.read(1 << 16).splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _key(cc: list[str]) -> str:
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), version.encode(), _cpu_id().encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:20]


def _build(cc: list[str], lib: Path) -> None:
    """Compile ``cpu.c`` into ``lib`` (atomically) and record its SHA-256 beside it."""
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{lib.name}.", suffix=".tmp", dir=lib.parent)
    os.close(fd)
    try:
        r = subprocess.run([*cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise OSError(f"{' '.join(cc)} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        Path(tmp + ".sha256").write_text(digest)
        os.replace(tmp + ".sha256", str(lib) + ".sha256")
        os.replace(tmp, lib)
    finally:
        for p in (tmp, tmp + ".sha256"):
            if os.path.exists(p):
                os.unlink(p)


def _load(lib: Path) -> ctypes.CDLL | None:
    """The built library, if its SHA-256 matches the record and its ABI number is ours."""
    try:
        want = Path(str(lib) + ".sha256").read_text().strip()
        if hashlib.sha256(lib.read_bytes()).hexdigest() != want:
            return None
        dll = ctypes.CDLL(str(lib))
    except OSError:
        return None
    if dll.sn_abi() != ABI:
        return None
    for name, args in _SIGNATURES.items():
        fn = getattr(dll, name)
        fn.argtypes, fn.restype = args, _RESTYPES.get(name)
    return dll


_loaded: list[ctypes.CDLL | None] = []  # library()'s result, once it ran: what a traced step reads


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use, then loaded from the cache), or None where they
    cannot be built; :func:`status` says why. Never raises: anything wrong means the torch code."""
    with _lock:
        try:
            dll = _build_and_load()
        except Exception as e:  # noqa: BLE001 - a missing source, a home-less user, ...: the torch code
            _status["state"] = f"not available ({type(e).__name__}: {e}): torch code"
            log.warning("supportnet: CPU support kernels not available (%s); the torch code runs instead", e)
            dll = None
        _loaded[:] = [dll]
        return dll


def _build_and_load() -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        _status["state"] = f"no C compiler ({os.environ.get('CC') or 'cc'} not found): torch code"
        return None
    lib = cache_dir() / f"cpu-{_key(cc)}.so"
    dll = _load(lib) if lib.exists() else None
    if dll is None:
        try:
            _build(cc, lib)
        except (OSError, subprocess.SubprocessError) as e:
            _status["state"] = f"build failed ({e}): torch code"
            log.warning("supportnet: CPU support kernels not built (%s); the torch code runs instead", e)
            return None
        dll = _load(lib)
    _status["state"] = f"loaded {lib}" if dll is not None else f"{lib} did not load: torch code"
    return dll


def status() -> str:
    """Whether the CPU kernels are in use, and why not (for benchmarks' records)."""
    if not switched_on():
        return f"{ENV}=0: torch code"
    library()
    return _status.get("state", "not built")


def enabled() -> bool:
    """Whether the layers use the CPU kernels (builds them on the first call).

    Traced (``torch.compile``, ``torch.export``), nothing is built: the kernels are in use when an
    eager call loaded them before (a forward pass, or this function), else the trace takes the
    torch code."""
    if torch.compiler.is_compiling():
        return switched_on() and bool(_loaded) and _loaded[0] is not None
    return switched_on() and library() is not None


def usable(q: torch.Tensor, contiguous: bool = False) -> bool:
    """Whether these CPU activations take the kernels: float32, dense rows of one example each
    (``contiguous``: in C order, as the packed supports are), not being traced."""
    if q.device.type != "cpu" or q.dtype != torch.float32 or q.dim() < 2 or q.numel() == 0:
        return False
    if not q.is_contiguous():
        if contiguous:
            return False
        if geometry(q) is None:
            return False
    return enabled()


def rows_fit(q: torch.Tensor, rows: torch.Tensor, bit_off: int) -> bool:
    """Whether packed ``rows`` can hold this layer's supports for ``q``: CPU uint8 ``(B, row_bytes)``
    with unit byte stride, and bits ``bit_off .. bit_off + U`` inside each row."""
    u = q.numel() // max(1, q.shape[0])
    return (
        rows.device.type == "cpu"
        and rows.dtype == torch.uint8
        and rows.dim() == 2
        and rows.shape[0] == q.shape[0]
        and rows.stride(1) == 1
        and 0 <= bit_off
        and bit_off + u <= 8 * rows.shape[1]
    )


def _check_rows(q: torch.Tensor, rows: torch.Tensor, bit_off: int) -> None:
    if not rows_fit(q, rows, bit_off):
        raise ValueError(
            f"packed rows {tuple(rows.shape)} ({rows.dtype}, strides {rows.stride()}) from bit {bit_off} "
            f"do not hold {q.numel() // max(1, q.shape[0])} bits per example for activations {tuple(q.shape)}"
        )


def _threads() -> int:
    return torch.get_num_threads()


def _rows_of(q: torch.Tensor) -> tuple[int, int]:
    return q.shape[0], q.numel() // q.shape[0]


_local = threading.local()


def _scratch(n: int) -> torch.Tensor:
    """A float32 buffer of at least ``n`` entries, kept per thread (the penalty's terms are written
    there first, one example per row, then gathered; a fresh one a call cost page faults)."""
    buf = getattr(_local, "scratch", None)
    if buf is None or buf.numel() < n:
        buf = _local.scratch = torch.empty(n, dtype=torch.float32)
    return buf


def mask_buffer(q: torch.Tensor, buf: torch.Tensor | None = None) -> torch.Tensor:
    """A uint8 tensor for the batch support of ``q`` (``q.shape[1:]``, laid out as ``q``'s units):
    ``buf`` when it fits, else a new one."""
    if buf is not None and buf.shape == q.shape[1:] and buf.stride() == q.stride()[1:] and buf.dtype == torch.uint8:
        return buf
    return torch.empty_strided(q.shape[1:], q.stride()[1:], dtype=torch.uint8)


def batch_forward(
    q: torch.Tensor, tau: float, rule: str, beta: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, m)``: the batch support ``m`` (bool, ``q.shape[1:]``, laid out as ``q``'s units) and
    ``out = relu_tau(q) * m``, in one OpenMP region; ``m`` is written into ``mask`` (uint8, from
    :func:`mask_buffer`) when given. No autograd (see :func:`gated_batch`)."""
    b, u = _rows_of(q)
    out = torch.empty_like(q)
    m = mask_buffer(q, mask)
    part = _scratch(-(-b // GROUP) * u)  # the groups' sums
    library().sn_batch_fwd(  # type: ignore[union-attr]
        q.data_ptr(), out.data_ptr(), m.data_ptr(), part.data_ptr(), b, u, GROUP, tau, beta, RULE_CODES[rule],
        _threads(),
    )  # fmt: skip
    return out, m.view(torch.bool)


class PenaltyTerms(NamedTuple):
    """What the penalty's gradient needs from the forward pass, instead of ``q``: per example, the
    positions where its term is on (the support off, ``q > tau``) as 64-bit words (``(B, ceil(U/64))``
    int64), their ``q - tau`` one example after the other (``over``, float32), and where each
    example's values start (``offsets``, ``B`` int64). Such positions are where the stored support
    disagrees with the current activations: few, so this is much less than ``q``."""

    words: torch.Tensor
    over: torch.Tensor
    offsets: torch.Tensor


def instance_forward(
    q: torch.Tensor, rows: torch.Tensor, bit_off: int, tau: float, penalty: bool
) -> tuple[torch.Tensor, torch.Tensor, PenaltyTerms | None]:
    """``(out, pen, terms)``: ``out = relu_tau(q) * m`` with ``m`` read from the packed ``rows`` from
    bit ``bit_off``; with ``penalty``, ``pen`` the consistency penalty ``mean(where(m, 0, relu(q - tau))^2)``
    (float32) and ``terms`` what its gradient needs (:class:`PenaltyTerms`); else a zero and None.
    ``q`` in C order. No autograd."""
    _check_rows(q, rows, bit_off)
    b, u = q.shape[0], q.numel() // q.shape[0]
    out = torch.empty_like(q)
    lib = library()
    assert lib is not None
    if not penalty:
        lib.sn_inst_fwd(
            q.data_ptr(), out.data_ptr(), rows.data_ptr(), rows.stride(0), int(bit_off), b, u, tau,
            None, None, None, None, None, None, _threads(),
        )  # fmt: skip
        return out, torch.zeros((), dtype=torch.float32), None
    sums, total = torch.empty(b, dtype=torch.float64), ctypes.c_double()
    words = torch.empty((b, -(-u // 64)), dtype=torch.int64)
    counts, offsets = torch.empty(b, dtype=torch.int64), torch.empty(b, dtype=torch.int64)
    scratch = _scratch(b * u)  # each example's values from its row start, gathered below
    n_terms = lib.sn_inst_fwd(
        q.data_ptr(), out.data_ptr(), rows.data_ptr(), rows.stride(0), int(bit_off), b, u, tau,
        sums.data_ptr(), ctypes.addressof(total), words.data_ptr(), scratch.data_ptr(), counts.data_ptr(),
        offsets.data_ptr(), _threads(),
    )  # fmt: skip
    over = torch.empty(n_terms, dtype=torch.float32)
    lib.sn_gather_rows(scratch.data_ptr(), u, counts.data_ptr(), offsets.data_ptr(), b, over.data_ptr(), _threads())
    pen = torch.tensor(total.value / q.numel(), dtype=torch.float32)
    return out, pen, PenaltyTerms(words, over, offsets)


def instance_backward(grad: torch.Tensor, out: torch.Tensor, terms: PenaltyTerms, scale: float) -> torch.Tensor:
    """The gradient with respect to ``q`` of :func:`instance_forward` with the penalty: ``grad``
    where ``out > 0`` (``m`` and ``q > tau``: torch's ``threshold_backward``), then ``(q - tau) * scale``
    written at the penalty's few terms (where that is zero)."""
    b, u = out.shape[0], out.numel() // out.shape[0]
    gin = torch.ops.aten.threshold_backward(grad, out, 0.0).contiguous()
    library().sn_inst_terms_bwd(  # type: ignore[union-attr]
        gin.data_ptr(), terms.words.data_ptr(), terms.over.data_ptr(), terms.offsets.data_ptr(), b, u, scale,
        _threads(),
    )  # fmt: skip
    return gin


def record(q: torch.Tensor, tau: float, rows: torch.Tensor, bit_off: int) -> torch.Tensor:
    """``relu_tau(q)``, and ``1[q > tau]`` written into the packed ``rows`` (``(B, row_bytes)``
    uint8, C-contiguous, zero where this layer's bits go) from bit ``bit_off``. ``q`` in C order.
    Traced (torch.compile, torch.export): the custom op ``supportnet::cpu_record``, which writes ``rows``."""
    _check_rows(q, rows, bit_off)
    if torch.compiler.is_compiling():
        return torch.ops.supportnet.cpu_record(q, float(tau), rows, int(bit_off))
    return _record(q, float(tau), rows, int(bit_off))


def _record(q: torch.Tensor, tau: float, rows: torch.Tensor, bit_off: int) -> torch.Tensor:
    b, u = _rows_of(q)
    out = torch.empty_like(q)
    library().sn_record(  # type: ignore[union-attr]
        q.data_ptr(), out.data_ptr(), rows.data_ptr(), rows.stride(0), bit_off, b, u, tau, _threads()
    )
    return out


def count_above(q: torch.Tensor, tau: float) -> int | torch.Tensor:
    """The number of activations ``q > tau``: one pass in C where the kernels take ``q`` (a Python
    int), else torch's ``(q > tau).sum()`` (a tensor, on ``q``'s device)."""
    if usable(q) and not torch.compiler.is_compiling():  # (a Python int: a host value, not traced)
        return int(library().sn_count_above(q.data_ptr(), q.numel(), tau, _threads()))  # type: ignore[union-attr]
    return (q > tau).sum()


def xor_popcount(a: np.ndarray, b: np.ndarray) -> int | None:
    """The number of bits that differ between two uint8 arrays of one shape, in one pass (numpy
    takes two and a temporary); None where the kernels are not in use."""
    if not enabled():
        return None
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"xor_popcount of {a.shape} {a.dtype} and {b.shape} {b.dtype}")
    return int(library().sn_xor_popcount(a.ctypes.data, b.ctypes.data, a.size))  # type: ignore[union-attr]


class GatedBatch(torch.autograd.Function):
    """``out`` of :func:`batch_forward` as an autograd node (the support goes into ``holder[0]``, a
    uint8 buffer, not through autograd); saves ``out`` only."""

    @staticmethod
    def forward(ctx, q, tau, rule, beta, holder):  # type: ignore[override]
        out, holder[0] = batch_forward(q, tau, rule, beta, holder[0])
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0.0), None, None, None, None


class GatedInstance(torch.autograd.Function):
    """``(out, pen)`` of :func:`instance_forward` as an autograd node. It saves ``out`` (which the
    next layer keeps anyway) and, with the penalty, its :class:`PenaltyTerms`, not ``q``: backward
    then reads what is still warm instead of the whole cold pre-activation."""

    @staticmethod
    def forward(ctx, q, rows, bit_off, tau, penalty):  # type: ignore[override]
        out, pen, terms = instance_forward(q, rows, bit_off, tau, penalty)
        ctx.save_for_backward(out, *(terms or ()))
        ctx.numel = q.numel()
        return out, pen

    @staticmethod
    @once_differentiable  # (the penalty's factor leaves autograd: a second derivative is refused, not wrong)
    def backward(ctx, grad, grad_pen):  # type: ignore[override]
        out, *terms = ctx.saved_tensors
        if not terms:  # no penalty: the gradient passes where out > 0, i.e. where m and q > tau
            return torch.ops.aten.threshold_backward(grad, out, 0.0), None, None, None, None
        # the penalty term's factor as the torch node forms it (a float32 product), so the same bits
        scale = 0.0 if grad_pen is None else float(grad_pen * (2.0 / ctx.numel))
        return instance_backward(grad, out, PenaltyTerms(*terms), scale), None, None, None, None


def gated_batch(
    q: torch.Tensor, tau: float, rule: str, beta: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """B-alternation's fused support on the CPU: ``(relu_tau(q) * m, m)``, ``m`` bool. With ``mask``
    (a uint8 buffer of :func:`mask_buffer`) the support is written there: the layers keep one per
    layer, because a new small tensor each step that lives until the next step moves the large
    activation buffers around the heap (docs/performance.md, "The CPU kernels")."""
    if torch.compiler.is_compiling():  # torch.compile / torch.export: the custom op (a new support each call)
        return torch.ops.supportnet.cpu_gated_batch(q, float(tau), rule, float(beta))
    holder = [mask]
    out = GatedBatch.apply(q, tau, rule, beta, holder)
    return out, holder[0].view(torch.bool)


def gated_instance(q: torch.Tensor, bits, tau: float, penalty: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """I-alternation's fused stored support on the CPU: ``(relu_tau(q) * m, pen)`` with ``m`` read
    from ``bits`` (a :class:`~supportnet.masks.LayerBits` on the CPU)."""
    if torch.compiler.is_compiling():  # torch.compile / torch.export: the custom op
        out, pen, *_ = torch.ops.supportnet.cpu_gated_instance(q, bits.rows, int(bits.offset), float(tau), penalty)
        return out, pen
    return GatedInstance.apply(q, bits.rows, bits.offset, tau, penalty)
