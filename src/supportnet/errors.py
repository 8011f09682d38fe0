"""Errors that reach the user.

Every error meant for a person is a :class:`SupportnetError`: its message is one
line that names the problem and says how to fix it. The command line prints it
as ``supportnet: error: ...`` and exits with code 2, without a traceback.
"""

from __future__ import annotations


class SupportnetError(Exception):
    """A user-facing error: one line, naming the problem and the fix (exit code 2)."""

    exit_code = 2


class ConfigError(SupportnetError):
    """An unknown key, a wrong type or an out-of-range value in a config."""


class DataError(SupportnetError):
    """A data set that is missing, truncated, corrupt or fails its checksum."""


class IntegrityError(SupportnetError):
    """A file (mask store, checkpoint) whose header or checksum does not verify."""


class DivergenceError(SupportnetError):
    """Training produced a NaN or Inf loss; the run stopped before saving it."""

    exit_code = 3
