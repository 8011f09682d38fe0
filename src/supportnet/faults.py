"""Fault injection for the kill-and-resume tests (never set in normal use).

``SUPPORTNET_FAULT=point:N`` makes the process kill itself with SIGKILL the N-th
time it passes ``point``: ``step`` (after an optimizer step), ``estimate`` (halfway
through a support-estimation pass) or ``checkpoint`` (a checkpoint's temporary file
written and fsynced, not yet renamed into place). ``SUPPORTNET_FAULT=disk-full:N``
makes the N-th atomic write fail as a full disk would (ENOSPC).
"""

from __future__ import annotations

import errno
import os
import signal

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("SUPPORTNET_FAULT")
    if not spec or ":" not in spec:
        return None
    point, n = spec.split(":", 1)
    try:
        return point, int(n)
    except ValueError:
        return None


def hit(point: str) -> None:
    """Count a pass through ``point``; die there if the environment asks for it."""
    t = _target()
    if t is None or t[0] != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == t[1]:
        if point == "disk-full":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        os.kill(os.getpid(), signal.SIGKILL)
