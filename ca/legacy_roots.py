"""The CA's ``[bridge] legacy_roots`` files, kept current (DESIGN §5 "Legacy trust"; :mod:`bridge.legacy_roots`).

Each named set of enterprise roots goes to every agent in its Sync state, and from there to Envoy as
the SDS validation context ``legacy/<name>``. An operator replaces a file (a new enterprise root, an
old one retired) and expects every proxy to follow without a restart, as they follow bundle changes:
:meth:`LegacyRootFiles.run` looks at the files every ``check_interval`` (their inode, size and mtime;
a file is read again only when those changed) and, when a set's certificates changed, wakes every
Sync stream of this CA process. Each stream reloads its agent's state and pushes it; the agent
publishes a new snapshot and its SDS streams push the new validation context to Envoy.

Every CA replica watches its own copy of the files and wakes its own streams (no NOTIFY): replicas
must be given the same files, as they are given the same configuration.

A file that cannot be read or holds no usable CA certificate stops the CA at start-up (ConfigError
naming the key). While the CA runs, such a file is logged once per change of it and the set it held
keeps being served: a half-written or mistaken file never leaves proxies without roots.

A set may hold CRLs of the CAs that issue the legacy servers' certificates (:mod:`bridge.legacy_roots`).
One past its next update makes Envoy refuse every server its CA issued, so each check also looks at the
CRLs served and logs a warning, once per set and CRL, for each that is stale: the operator's cue to
put a fresh one in the file.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from bridge.legacy_chain import read_pki_file
from bridge.legacy_roots import legacy_roots_pem, stale_crls
from ca.sync import Change, ChangeHub
from spiffe_core.clock import Clock, SystemClock
from spiffe_core.errors import ConfigError, InvalidArgument

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int]  # st_ino, st_size, st_mtime_ns


class LegacyRootFiles:
    """The configured sets (name -> PEM file) and the canonical PEM of each as last read successfully."""

    def __init__(
        self, files: Mapping[str, Path], hub: ChangeHub, check_interval: float, clock: Clock | None = None
    ) -> None:
        self._files = dict(files)
        self._hub = hub
        self._interval = check_interval
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._stamps: dict[str, _Stamp | None] = {}
        self._roots: Mapping[str, bytes] = MappingProxyType({})
        self._warned: set[tuple[str, bytes, str]] = set()  # (name, set, CRL issuer) warned of as stale

    def load(self) -> None:
        """Read every file now (at start-up). ConfigError naming the key of a file that is unusable."""
        roots: dict[str, bytes] = {}
        for name, path in sorted(self._files.items()):
            try:
                self._stamps[name] = _stamp(path)
                roots[name] = _read(path)
            except InvalidArgument as err:
                raise ConfigError(f"bridge.legacy_roots.{name}: {err}; fix the file or the path") from err
        self._roots = MappingProxyType(roots)
        self._warn_of_stale_crls()

    def get_roots(self) -> Mapping[str, bytes]:
        """The current sets, name -> canonical PEM (an immutable snapshot: readers need no lock)."""
        return self._roots

    def refresh(self) -> bool:
        """Read again each file whose inode, size or mtime changed; True when a set's certificates changed.
        A file that became unusable is logged and its set kept as it was. Blocking (file reads)."""
        with self._lock:
            roots = dict(self._roots)
            for name, path in sorted(self._files.items()):
                try:
                    stamp = _stamp(path)
                except InvalidArgument as err:
                    stamp = None
                    if self._stamps.get(name) is not None:
                        log.error("bridge.legacy_roots.%s: %s; still serving the roots read before", name, err)
                if stamp is None or stamp == self._stamps.get(name):
                    self._stamps[name] = stamp
                    continue
                self._stamps[name] = stamp
                try:
                    roots[name] = _read(path)
                except InvalidArgument as err:
                    log.error("bridge.legacy_roots.%s: %s; still serving the roots read before", name, err)
            changed = roots != self._roots
            if changed:
                self._roots = MappingProxyType(roots)
                log.info("legacy roots changed (%s); pushing them to the agents", ", ".join(sorted(roots)))
            self._warn_of_stale_crls()
            return changed

    def _warn_of_stale_crls(self) -> None:
        now = self._clock.now()
        for name, pem in sorted(self._roots.items()):
            for issuer in stale_crls(pem, now):
                if (name, pem, issuer) not in self._warned:
                    self._warned.add((name, pem, issuer))
                    log.warning(
                        "bridge.legacy_roots.%s: the CRL of %s is past its next update; Envoy refuses every "
                        "server that CA issued until %s holds a fresh one",
                        name,
                        issuer,
                        self._files[name],
                    )
        self._warned = {key for key in self._warned if self._roots.get(key[0]) == key[1]}

    async def run(self) -> None:
        """Until cancelled: every check interval, :meth:`refresh` and, on a change, wake every Sync stream."""
        while True:
            await asyncio.sleep(self._interval)
            if await asyncio.to_thread(self.refresh):
                self._hub.notify(Change.everyone())


def _stamp(path: Path) -> _Stamp:
    try:
        info = path.stat()
    except OSError as err:
        raise InvalidArgument(f"cannot read {path} ({err.strerror})") from err
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _read(path: Path) -> bytes:
    return legacy_roots_pem(read_pki_file(path, "legacy roots file"), str(path))
