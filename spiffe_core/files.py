"""Writing credentials to files atomically: a reader sees the old file or the new one, never half of one.

The temporary file is made with its final mode before anything is written to it, so a private key is
0600 from the first byte and no other user can ever read it, not even briefly. The write is fsynced
before the rename, and the directory after it, so a crash leaves either the old or the new content on
disk. The CA (``ca.files``), the agent (``sds.files``) and the bridge's exchange all write this way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` (mode ``mode``), creating its directory if needed."""
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
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; some file systems cannot fsync a directory, which is harmless.
    Also used by writers of several files at once (``bridge.enroll_files``)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
