"""Writing credentials to disk atomically: a reader sees the old file or the new one, never half.

Private keys are created 0600 from the first byte (``os.open`` with the mode, not a chmod after the
fact), so there is no window in which another user can read them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def write_private_file(path: Path, data: bytes) -> None:
    _write_atomically(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    _write_atomically(path, data, 0o644)
