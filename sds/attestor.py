"""Workload attestation: who is calling, as selectors, from the kernel's view of the caller.

The agent learns the caller's pid, uid and gid from the Unix socket (SO_PEERCRED; the kernel fills it
in, the caller cannot lie), then reads the rest from /proc: the executable's real path and the
SHA-256 of that executable. Selectors produced (DESIGN §4):

    unix:uid:<uid>   unix:gid:<gid>   unix:user:<name>   unix:group:<name>
    unix:path:<real path of /proc/<pid>/exe>   unix:sha256:<hex digest of that file>

Digests are cached by (path, device, inode, mtime, size), so 1,000 Envoy streams hash the Envoy
binary once. A caller that exits before it is attested gets nothing (NotAuthorized).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import threading
from dataclasses import dataclass
from pathlib import Path

from spiffe_core.errors import NotAuthorized
from spiffe_core.selectors import Selector

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


class ExecutableDigests:
    """SHA-256 of executables, cached by file identity (a replaced binary gets a new digest)."""

    def __init__(self, max_entries: int = 256) -> None:
        self._cache: dict[tuple[str, int, int, int, int], str] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def digest(self, path: str) -> str:
        st = os.stat(path)
        key = (path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                sha.update(chunk)
        value = sha.hexdigest()
        with self._lock:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[key] = value
        return value


def attest_process(
    creds: PeerCredentials, digests: ExecutableDigests, proc: Path = Path("/proc")
) -> frozenset[Selector]:
    """Selectors for a caller; blocking (reads /proc and may hash a file): run it in a thread."""
    selectors = {Selector("unix", f"uid:{creds.uid}"), Selector("unix", f"gid:{creds.gid}")}
    # A uid or gid without a passwd/group entry (containers) still has its numeric selector.
    with contextlib.suppress(KeyError):
        selectors.add(Selector("unix", f"user:{pwd.getpwuid(creds.uid).pw_name}"))
    with contextlib.suppress(KeyError):
        selectors.add(Selector("unix", f"group:{grp.getgrgid(creds.gid).gr_name}"))
    try:
        exe = os.readlink(proc / str(creds.pid) / "exe")
        digest = digests.digest(exe)
    except FileNotFoundError:
        raise NotAuthorized(f"caller process {creds.pid} exited before it could be attested") from None
    except PermissionError:
        raise NotAuthorized(
            f"cannot read the executable of caller process {creds.pid}; run the agent as root or as the workloads' user"
        ) from None
    selectors.add(Selector("unix", f"path:{exe.removesuffix(' (deleted)')}"))
    selectors.add(Selector("unix", f"sha256:{digest}"))
    return frozenset(selectors)
