"""Taking over a Unix socket path safely: a path some other process still serves is left alone
(ConfigError), a stale socket left by an agent that did not stop cleanly is replaced, and a file that is
not a socket is never removed. Used by the Workload API and SDS endpoints and by the health listener."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

from spiffe_core.errors import ConfigError


def refuse_live_socket(path: Path) -> None:
    """Raise ConfigError when a process answers on the socket at ``path`` (an agent with another
    data_dir); a socket nobody listens on, or no socket at all, passes."""
    if not path.is_socket():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return  # nobody listens: left by an agent that did not stop cleanly
    raise ConfigError(
        f"{path} is in use by another process (an agent with another data_dir?); stop it or "
        "configure another socket path"
    )


def remove_stale_socket(path: Path, what: str) -> None:
    """Remove the socket at ``path`` (checked with :func:`refuse_live_socket` first) so ``what`` can be
    bound there; ConfigError, touching nothing, when the path holds something other than a socket."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(
            f"{path} exists and is not a socket; refusing to replace it with {what} — "
            "remove it or configure another path"
        )
    path.unlink()
