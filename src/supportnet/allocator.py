"""Keep glibc's malloc from handing activation memory back to the kernel after every step.

A CPU training step allocates and frees the same large buffers (activations, gradients,
masks) every step. With glibc's defaults, freed memory at the top of the heap beyond
``M_TRIM_THRESHOLD`` is returned to the kernel and buffers over ``M_MMAP_THRESHOLD`` get
mappings of their own, so the next step page-faults the same megabytes back in, zeroed by
the kernel. Which steps pay depends on the heap's history, so the cost comes and goes: on the
project's 2-core VM, after a few hundred steps of the four methods in one process, an SGD step
took 43.8 ms untuned and 25.6 ms tuned, with 62 s of system time against 0.9 s
(docs/performance.md, "The allocator", for the command and the file).

:func:`tune_allocator` sets the three thresholds once per process (``mallopt``): buffers up
to 32 MiB come from the heap, and the heap is not trimmed. The process keeps the heap it has
used instead of handing it back between steps (its resident set stays near its peak).
``fit()``, :func:`supportnet.alternation` and the command line call it. Nothing is done where
the C library is not glibc, where the user chose malloc's settings (a ``MALLOC_*`` tunable of
these three or ``glibc.malloc.*`` in ``GLIBC_TUNABLES``), where another allocator is preloaded
(jemalloc, tcmalloc, mimalloc), or with ``SUPPORTNET_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys

from .errors import ConfigError

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # 2 GiB, mallopt's largest int: in effect, never trim
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time (address space only until touched)
ENV_TUNABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
MALLOC_CHOICES = ("", "tuned", "default")  # SUPPORTNET_MALLOC

_state: dict[str, str] = {}


def _why_not() -> str | None:
    """Why the allocator is left as it is, or None to tune it."""
    choice = os.environ.get("SUPPORTNET_MALLOC", "")
    if choice.lower() not in MALLOC_CHOICES:
        raise ConfigError(
            f"SUPPORTNET_MALLOC={choice!r} is not a choice; set it to 'default' (leave malloc alone) "
            "or 'tuned', or unset it"
        )
    if choice.lower() == "default":
        return "SUPPORTNET_MALLOC=default"
    if not sys.platform.startswith("linux"):
        return f"platform {sys.platform}"
    if platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    if any(k in os.environ for k in ENV_TUNABLES) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "malloc's settings chosen in the environment (MALLOC_* or GLIBC_TUNABLES)"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(a in preload for a in OTHER_ALLOCATORS):
        return f"another allocator preloaded ({preload})"
    return None


def tune_allocator() -> str:
    """Set glibc's malloc thresholds for training (see the module docstring), once per process.

    Returns what was done: ``"tuned"``, or ``"left: <why>"``. Safe to call many times. An
    unknown ``SUPPORTNET_MALLOC`` value is a :class:`~supportnet.errors.ConfigError`."""
    if "result" in _state:
        return _state["result"]
    why = _why_not()
    if why is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            why = "no mallopt in the C library (not glibc)"
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
            refused = [param for param, value in settings if mallopt(param, value) != 1]  # every one tried
            why = f"mallopt refused parameter(s) {refused} (the others are set)" if refused else None
    _state["result"] = "tuned" if why is None else f"left: {why}"
    log.debug("malloc %s", _state["result"])
    return _state["result"]
