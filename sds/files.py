"""Writing the agent's files atomically: a reader sees the old file or the new one, never half of one.

Private keys are created 0600 from the first byte (the temporary file is made 0600 before anything is
written to it), so no other user can ever read them, not even briefly. The write is fsynced before the
rename, and the directory after it, so a crash leaves either the old or the new content on disk.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; some file systems cannot fsync a directory, which is harmless."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret (a private key, or a file holding keys) as 0600."""
    _write_atomically(path, data, PRIVATE_MODE)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a file anyone on the host may read (certificates, bundles) as 0644."""
    _write_atomically(path, data, PUBLIC_MODE)


def make_private_directory(path: Path) -> None:
    """Create a directory only its owner can enter (0700), or tighten an existing one."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
