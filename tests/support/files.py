"""Changing files the way operators' tooling does, for tests of processes that watch them."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and rename it over ``path``: readers see the old or the new content,
    never half of it, and the file gets a new inode (as with configuration management)."""
    scratch = path.with_name(path.name + ".new")
    scratch.write_bytes(data)
    os.replace(scratch, path)
