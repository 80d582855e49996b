"""One process per data directory: the CA and the agent each lock theirs before touching anything in
it, so a second instance started by mistake stops with the first one's pid instead of sharing its keys
and state files."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from spiffe_core.errors import ConfigError, FailedPrecondition

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


def lock_data_dir(data_dir: Path, *, key: str, program: str) -> DataDirLock:
    """Create ``data_dir`` (0700) if needed and lock it for this process, before anything in it is
    touched. ``key`` is the setting that names the directory (``server.data_dir``), ``program`` what
    runs on it (``CA``), both for the messages. Raises FailedPrecondition when another process holds it
    ("another CA is already running (pid N)") and ConfigError when the directory cannot be used (not a
    directory, no permission)."""
    path = data_dir / LOCK_FILE
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"{key}: {data_dir} is not a directory; move that file away or point {key} elsewhere")
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as err:
        raise ConfigError(
            f"{key}: {data_dir} is not usable ({err.strerror}: {err.filename}); point {key} at a directory this "
            "user can write, or fix its owner and mode"
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        owner = _read_pid(fd)
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(f"{key}: cannot lock {path} ({err.strerror}); use a local file system") from err
        raise FailedPrecondition(
            f"another {program} is already running (pid {owner}) on {key} {data_dir}; stop it first, or give this "
            f"instance its own {key}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(fd, path)


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"
