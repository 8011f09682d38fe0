"""Memory checks before large allocations that a number in the user's input decides.

A config value (``data.pad``, ``data.image_size``, ``model.kwargs``), a command-line size
or a file header can ask for more memory than the machine has. Rather than let the
allocation fail deep inside torch or numpy (a traceback, or the kernel's OOM killer a
minute later), the size is computed first and compared with what the machine has free.
"""

from __future__ import annotations

import os

from .errors import SupportnetError


class ResourceError(SupportnetError):
    """An input that would need more memory than the machine has."""


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``; else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return 1 << 40


def human(n: float) -> str:
    """``n`` bytes for a person: ``"1.5 GiB"``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check_memory(nbytes: int, what: str, fix: str) -> None:
    """Refuse (one line) if ``nbytes`` is more than the memory available now.

    ``what`` says what would be allocated ("the padded training set"), ``fix`` what to change.
    """
    free = available_memory()
    if nbytes > free:
        raise ResourceError(f"{what} would need {human(nbytes)} of memory, {human(free)} is available; {fix}")
