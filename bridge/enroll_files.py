"""Writing an enrollment's files into the output directory as one set.

Config management copies the set as a whole (a config that names a token file, the token, the unit
that loads it), so a failed run must not leave half a new set beside half the old one. Every file is
first written and fsynced in a private staging directory inside the output directory; only when all
of them are on disk are they renamed into place, one rename each (after a check that nothing stands in
the way of a rename). A failure before that leaves the output directory as it was. Secrets are created
0600 from the first byte.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spiffe_core.errors import InvalidArgument
from spiffe_core.files import fsync_directory

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass(frozen=True, slots=True)
class OutputFile:
    name: str  # a plain file name inside the output directory
    data: bytes = field(repr=False)
    mode: int = PUBLIC_MODE


def _stage(staging: Path, item: OutputFile) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(staging / item.name, flags, item.mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), item.mode)  # the umask may have taken bits of a public file's mode
        handle.write(item.data)
        handle.flush()
        os.fsync(handle.fileno())


def _refuse_directories(out_dir: Path, files: Sequence[OutputFile]) -> None:
    """A directory where a file must go would fail its rename after others were replaced: refuse first."""
    for item in files:
        if (out_dir / item.name).is_dir():
            raise InvalidArgument(f"--out {out_dir}: {item.name} is a directory; move it away (a file goes there)")


def write_output(out_dir: Path, files: Sequence[OutputFile], stale: Sequence[str] = ()) -> list[Path]:
    """Write ``files`` into ``out_dir`` (made 0700 if missing) as one set and remove the ``stale`` names
    a previous enrollment may have left there. Returns the paths written. Raises InvalidArgument
    naming the directory when it cannot be written; the directory is then left as it was."""
    _refuse_directories(out_dir, files)
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".enroll-", dir=out_dir))
    except OSError as err:
        raise InvalidArgument(f"cannot write to --out {out_dir}: {err.strerror}; choose a writable directory") from err
    try:
        for item in files:
            _stage(staging, item)
        fsync_directory(staging)
        for item in files:
            os.replace(staging / item.name, out_dir / item.name)
        for name in stale:
            (out_dir / name).unlink(missing_ok=True)
        fsync_directory(out_dir)
    except OSError as err:
        raise InvalidArgument(f"cannot write to --out {out_dir}: {err.strerror}; choose a writable directory") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / item.name for item in files]
