"""Credentials on disk: written atomically (a reader sees the old file or the new one, never half),
and read only when no one else could have read or replaced them.

Private keys are created 0600 from the first byte (``os.open`` with the mode, not a chmod after the
fact), so there is no window in which another user can read them. Secrets are read without following
symbolic links and refused when group or others can access them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from spiffe_core.errors import ConfigError, FailedPrecondition
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


LOCK_FILE = "lock"


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/{LOCK_FILE}``, held while this object lives (and released by
    the kernel when the process ends, however it ends). The file holds the owner's pid, for the message
    a second instance prints."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Create ``data_dir`` (0700) if needed and lock it for this process, before anything in it is
    touched. Raises FailedPrecondition when another process holds it ("already running (pid N)") and
    ConfigError when the directory cannot be used (not a directory, no permission)."""
    path = data_dir / LOCK_FILE
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(
            f"server.data_dir: {data_dir} is not a directory; move that file away or point server.data_dir elsewhere"
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as err:
        raise ConfigError(
            f"server.data_dir: {data_dir} is not usable ({err.strerror}: {err.filename}); "
            "point server.data_dir at a directory this user can write, or fix its owner and mode"
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        owner = _read_pid(fd)
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"server.data_dir: cannot lock {path} ({err.strerror}); use a local file system") from err
        raise FailedPrecondition(
            f"another CA is already running (pid {owner}) on server.data_dir {data_dir}; stop it first, or give this "
            f"instance its own server.data_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(fd, path)


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"
