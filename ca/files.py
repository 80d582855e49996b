"""Credentials on disk: written atomically (a reader sees the old file or the new one, never half),
and read only when no one else could have read or replaced them.

Private keys are created 0600 from the first byte (``os.open`` with the mode, not a chmod after the
fact), so there is no window in which another user can read them. Secrets are read without following
symbolic links and refused when group or others can access them.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from spiffe_core.errors import ConfigError
from spiffe_core.files import write_atomically

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_private_file(path: Path, data: bytes) -> None:
    write_atomically(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    write_atomically(path, data, 0o644)


def read_private_file(path: Path, *, what: str, chmod: str, modes: tuple[int, ...] | None = None) -> bytes:
    """Read a secret file (a key, a KEK, a Vault token), refusing symlinks, non-regular files and any
    access by group or others (``modes`` narrows the allowed permission bits further). Raises
    FileNotFoundError if missing, ConfigError naming ``what`` and the fix for the rest."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(f"{what} {path} is a symbolic link; put the file itself there") from err
        if isinstance(err, FileNotFoundError):
            raise
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from err
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())  # of the file we opened, not of whatever the name points to now
        mode = stat.S_IMODE(status.st_mode)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file; put the file itself there")
        if mode & 0o077 or (modes is not None and mode not in modes):
            allowed = " or ".join(f"{m:04o}" for m in modes) if modes else "without group/other access"
            raise ConfigError(f"{what} {path} has mode {mode:04o}; it must be {allowed} — run 'chmod {chmod} {path}'")
        return handle.read()
