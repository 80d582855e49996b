"""Writing the agent's files atomically: a reader sees the old file or the new one, never half of one.

Private keys are created 0600 from the first byte (the temporary file is made 0600 before anything is
written to it), so no other user can ever read them, not even briefly. The write is fsynced before the
rename, and the directory after it, so a crash leaves either the old or the new content on disk.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from spiffe_core.errors import ConfigError
from spiffe_core.files import write_atomically

log = logging.getLogger(__name__)

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
PUBLIC_DIRECTORY_MODE = 0o755


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret (a private key, or a file holding keys) as 0600."""
    write_atomically(path, data, PRIVATE_MODE)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a file anyone on the host may read (certificates, bundles) as 0644."""
    write_atomically(path, data, PUBLIC_MODE)


def make_private_directory(path: Path) -> None:
    """Create a directory only its owner can enter (0700), or tighten an existing one."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def make_public_directory(path: Path) -> None:
    """Create the directory of the agent's public sockets (0755: every user may reach them; peer
    attestation, not file permissions, decides what a caller gets), or check an existing one.

    Raises :class:`ConfigError` when ``path`` is a symlink or not a directory, belongs to a user other
    than root or the agent, or others may write to it without the sticky bit (they could replace the
    sockets with their own). Logs a warning when a directory on the way keeps other users out."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        path.mkdir(parents=True, mode=PUBLIC_DIRECTORY_MODE)
        os.chmod(path, PUBLIC_DIRECTORY_MODE)  # mkdir's mode is filtered by the umask
        info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"socket_dir: {path} is not a directory (or is a symlink); the agent's sockets need a real "
            "directory — remove it or configure another socket_dir"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise ConfigError(
            f"socket_dir: {path} belongs to uid {info.st_uid}, who could replace the agent's sockets; use "
            f"a directory owned by root or the agent (uid {os.geteuid()})"
        )
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"socket_dir: {path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}), who could "
            "replace the agent's sockets; make it 0755"
        )
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.warning(
                "%s (mode %04o) keeps other users from reaching the agent's sockets in %s; workloads of other "
                "users cannot connect — make it searchable (o+x) or configure another socket_dir",
                directory,
                stat.S_IMODE(mode),
                path,
            )
            break
