"""Workload attestation: the kernel's word about a calling process, turned into selectors (DESIGN §4).

SPIFFE_Workload_Endpoint.md §5 asks for out-of-band authenticity checks that need nothing from the
workload. On a Unix socket the kernel tells the server who connected (``SO_PEERCRED``: pid, uid,
gid); this module turns those credentials into ``unix`` selectors that registration entries match on:

* ``unix:uid:<uid>``, ``unix:gid:<gid>`` — always;
* ``unix:user:<name>``, ``unix:group:<name>`` — when the account database names them;
* ``unix:path:<path>`` — the executable, as the kernel names it in ``/proc/<pid>/exe`` (a binary
  deleted or replaced since it started reads ``<path> (deleted)``, so it no longer matches);
* ``unix:sha256:<hex>`` — the digest of the executable the process is running (read through
  ``/proc/<pid>/exe``, which opens the running inode even if the file was replaced on disk).

Races: the caller may exit before it is attested, and its pid may then name another process. The
endpoint hands in a pidfd obtained for the exact connecting process (``SO_PEERPIDFD``); after
``/proc`` has been read, the pidfd must still show that process alive, otherwise the facts read may
belong to a successor and the caller is refused.

A process may ``exec`` another binary after it connected: its connection, pid and pidfd stay the
same, but ``/proc/<pid>/exe`` now names the new binary. The servicers therefore attest again before
every response and end a stream whose caller's selectors changed (:func:`check_still_attested`).

Digests are cached by (path, device, inode, mtime, size), so a workload calling repeatedly costs a
few syscalls, not a re-hash. All of the work (account lookups may go to LDAP through NSS, hashing a
large binary takes milliseconds) runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import logging
import os
import pwd
import select
import threading
from collections import OrderedDict
from io import BufferedReader
from pathlib import Path

from spiffe_core.errors import NotAuthorized
from spiffe_core.peers import PeerCredentials
from spiffe_core.selectors import Selector

logger = logging.getLogger(__name__)

UNIX = "unix"
_DIGEST_CACHE_ENTRIES = 1024


class ExecutableDigests:
    """sha256 of executables, cached by (path, st_dev, st_ino, st_mtime_ns, st_size) of the open file.

    A rebuilt binary gets a new inode or mtime, so a stale digest is never served for new content.
    Bounded (least recently used entries are dropped). Safe to call from several threads."""

    def __init__(self, max_entries: int = _DIGEST_CACHE_ENTRIES) -> None:
        self._max_entries = max_entries
        self._digests: OrderedDict[tuple[str, int, int, int, int], str] = OrderedDict()
        self._lock = threading.Lock()
        self._hashed = 0

    @property
    def files_hashed(self) -> int:
        """How many times a file was actually read and hashed (cache misses)."""
        return self._hashed

    def digest(self, path: str, file: BufferedReader) -> str:
        """Hex sha256 of the open ``file`` whose name is ``path``; blocking, call it off the event loop."""
        info = os.fstat(file.fileno())
        key = (path, info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._digests.get(key)
            if cached is not None:
                self._digests.move_to_end(key)
                return cached
        digest = hashlib.file_digest(file, "sha256").hexdigest()
        with self._lock:
            self._hashed += 1
            self._digests[key] = digest
            while len(self._digests) > self._max_entries:
                self._digests.popitem(last=False)
        return digest


class ProcessAttestor:
    """Peer credentials → ``unix`` selectors, reading ``/proc`` and the account database."""

    def __init__(self, digests: ExecutableDigests | None = None, proc: Path = Path("/proc")) -> None:
        self._digests = digests or ExecutableDigests()
        self._proc = proc
        # Callers of reads asked for but not begun yet, by the credentials they are about (each caller
        # waits on a future of its own, so one that goes away takes nothing from the others).
        self._waiting: dict[PeerCredentials, list[asyncio.Future[frozenset[Selector]]]] = {}

    async def attest_process(self, creds: PeerCredentials, pidfd: int | None = None) -> frozenset[Selector]:
        """The selectors of the process ``creds`` describe, read after this call began.

        Callers asking about the same credentials before the read begins share it: a snapshot pushed to
        1,000 streams of one Envoy costs one read of ``/proc``, not 1,000. Sharing never hands out
        stale facts, because a read joins only callers that were already waiting when it started, the
        same guarantee each caller would get from a read of its own.

        ``pidfd`` refers to that exact process; when given, the caller is refused if the process
        exited by the time the read finished (its pid may then name another process). It is checked
        for each caller, after the shared read, so one caller's live process never vouches for
        another's. The caller keeps ``pidfd`` open until this returns. Raises :class:`NotAuthorized`
        when the process is gone."""
        loop = asyncio.get_running_loop()
        mine: asyncio.Future[frozenset[Selector]] = loop.create_future()
        waiting = self._waiting.get(creds)
        if waiting is None:
            waiting = self._waiting[creds] = []
            # Begins once every callback already queued has run: the other streams woken by the same
            # change reach this point in that pass and join.
            loop.call_soon(self._begin_read, creds)
        waiting.append(mine)
        selectors = await mine
        if pidfd is not None and _has_exited(pidfd):
            raise _exited(creds.pid)
        return selectors

    def _begin_read(self, creds: PeerCredentials) -> None:
        callers = self._waiting.pop(creds)  # callers from now on wait for a read that begins after them

        def settle(read: asyncio.Future[frozenset[Selector]]) -> None:
            error = read.exception()
            for caller in callers:
                if caller.done():  # cancelled: its stream went away
                    continue
                if error is None:
                    caller.set_result(read.result())
                else:
                    caller.set_exception(error)

        asyncio.ensure_future(asyncio.to_thread(self._read, creds)).add_done_callback(settle)

    def _read(self, creds: PeerCredentials) -> frozenset[Selector]:
        selectors = {Selector(UNIX, f"uid:{creds.uid}"), Selector(UNIX, f"gid:{creds.gid}")}
        user = _user_name(creds.uid)
        if user is not None:
            selectors.add(Selector(UNIX, f"user:{user}"))
        group = _group_name(creds.gid)
        if group is not None:
            selectors.add(Selector(UNIX, f"group:{group}"))
        selectors.update(self._executable_selectors(creds.pid))
        return frozenset(selectors)

    def _executable_selectors(self, pid: int) -> set[Selector]:
        exe = self._proc / str(pid) / "exe"
        try:
            path = os.readlink(exe)
            with open(exe, "rb") as file:
                digest = self._digests.digest(path, file)
        except (FileNotFoundError, ProcessLookupError) as err:
            # Gone, or a zombie (whose exe link no longer resolves): nothing left to attest.
            raise _exited(pid) from err
        except PermissionError:
            # An agent not running as root may not read other users' /proc/<pid>/exe. The caller still
            # gets its uid/gid selectors; entries that name a path or digest will not match it.
            logger.warning(
                "cannot read %s: the agent lacks the privilege to attest the executable of pid %d; "
                "unix:path and unix:sha256 selectors are left out (run the agent as root to get them)",
                exe,
                pid,
            )
            return set()
        return {Selector(UNIX, f"path:{path}"), Selector(UNIX, f"sha256:{digest}")}


def check_still_attested(admitted: frozenset[Selector], now: frozenset[Selector]) -> None:
    """Raise :class:`NotAuthorized` when a caller's selectors read ``now`` differ from those it was
    ``admitted`` with — typically its process executed another binary (``unix:path``/``unix:sha256``
    changed), so it must not receive what the earlier binary was entitled to."""
    if now == admitted:
        return
    gone = ", ".join(str(s) for s in sorted(admitted - now)) or "none"
    new = ", ".join(str(s) for s in sorted(now - admitted)) or "none"
    raise NotAuthorized(
        f"the caller's selectors changed since it was attested (no longer: {gone}; now also: {new}), e.g. its "
        "process executed another binary; the connection's identity is not handed to what runs now — "
        "reconnect to be attested afresh"
    )


def _exited(pid: int) -> NotAuthorized:
    return NotAuthorized(
        f"caller process exited before attestation (pid {pid}); the process that opens a Workload API "
        "connection must stay alive while it calls, so its identity can be checked"
    )


def _has_exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited (Linux ≥ 5.3)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None
