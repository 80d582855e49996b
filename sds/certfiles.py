"""Cert-file mode: X509-SVIDs as files, for applications that speak neither SDS nor the Workload API
(DESIGN §4 "write cert/key/bundle files atomically and run a reload command on every change", §5
"cert files with reload hooks").

For each configured target directory the writer keeps three files:

* ``svid.pem`` — the X509-SVID chain, leaf first (0644);
* ``svid_key.pem`` — its private key, PKCS#8 PEM, created 0600 from the first byte;
* ``bundle.pem`` — the X.509 authorities of the agent's own trust domain (0644). Federated bundles
  are not written here: bundles of different trust domains are never merged into one file.

Each file is replaced atomically (temporary file, fsync, rename). Files are rewritten, and the
target's reload command run, only when that target's content changed — a change to another target's
SVID leaves it alone, and so does a restart that finds the same content on disk. The reload command
is split like a shell would but run without one, with a timeout; its exit status is logged, never the
files' content.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from sds.cache import CacheSnapshot, WorkloadCache, WorkloadSvid
from sds.config import CertFileTarget
from sds.files import write_private_file, write_public_file

log = logging.getLogger(__name__)

SVID_FILE = "svid.pem"
KEY_FILE = "svid_key.pem"
BUNDLE_FILE = "bundle.pem"


@dataclass(frozen=True, slots=True)
class TargetFiles:
    """The content of one target's three files."""

    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    bundle_pem: bytes

    def digest(self) -> bytes:
        """A fingerprint of all three files, so the writer remembers what it wrote without keeping the key."""
        h = hashlib.sha256()
        for part in (self.chain_pem, self.key_pem, self.bundle_pem):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()


def select_svid(target: CertFileTarget, snapshot: CacheSnapshot) -> WorkloadSvid | None:
    """The SVID for ``target``: among those entitled to its selectors (all of them when it names
    none), the one with its SPIFFE ID, or else the first one (the "default" SVID)."""
    candidates = snapshot.svids_for(frozenset(target.selectors)) if target.selectors else snapshot.svids
    for svid in candidates:
        if target.spiffe_id is None or svid.spiffe_id == target.spiffe_id:
            return svid
    return None


def render(target: CertFileTarget, snapshot: CacheSnapshot) -> TargetFiles | None:
    """What ``target``'s files must hold for ``snapshot``, or None when it has no SVID or bundle for it."""
    svid = select_svid(target, snapshot)
    if svid is None or snapshot.bundle is None:
        return None
    return TargetFiles(
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain),
        key_pem=svid.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        bundle_pem=snapshot.bundle.x509_authorities_pem(),
    )


def read_files(directory: Path) -> TargetFiles | None:
    """What a target directory holds now, or None when any of the three files is missing or unreadable."""
    try:
        return TargetFiles(
            chain_pem=(directory / SVID_FILE).read_bytes(),
            key_pem=(directory / KEY_FILE).read_bytes(),
            bundle_pem=(directory / BUNDLE_FILE).read_bytes(),
        )
    except OSError:
        return None


def write_files(directory: Path, files: TargetFiles) -> None:
    """Replace the three files atomically; the key first, so a new chain never sits next to an old key."""
    write_private_file(directory / KEY_FILE, files.key_pem)
    write_public_file(directory / SVID_FILE, files.chain_pem)
    write_public_file(directory / BUNDLE_FILE, files.bundle_pem)


async def run_reload_command(argv: Sequence[str], time_limit: float) -> int | None:
    """Run ``argv`` (no shell), wait at most ``time_limit`` seconds; return its exit status, or None when
    it could not start or had to be killed. Its output goes where the agent's own output goes."""
    try:
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
    except OSError as err:
        log.error("reload command %r could not start: %s", argv[0], err.strerror)
        return None
    try:
        async with asyncio.timeout(time_limit):
            return await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        log.error("reload command %r did not finish within %g s and was killed", argv[0], time_limit)
        return None


class CertFileWriter:
    """Keeps every configured target's files in step with the cache; :meth:`run` until cancelled."""

    def __init__(self, cache: WorkloadCache, targets: Sequence[CertFileTarget]) -> None:
        self._cache = cache
        self._targets = tuple(targets)
        self._written: dict[int, bytes | None] = {}

    async def run(self) -> None:
        async for snapshot in self._cache.subscribe():
            await self.apply(snapshot)

    async def apply(self, snapshot: CacheSnapshot) -> None:
        """Bring every target up to ``snapshot``; a failure in one target does not hold up the others."""
        for index, target in enumerate(self._targets):
            files = render(target, snapshot)
            if files is None:
                continue  # nothing to hand out yet: keep what the directory holds
            digest = files.digest()
            if index not in self._written:
                on_disk = await asyncio.to_thread(read_files, target.dir)
                self._written[index] = None if on_disk is None else on_disk.digest()
            if self._written[index] == digest:
                continue
            try:
                await asyncio.to_thread(write_files, target.dir, files)
            except OSError as err:
                log.error(
                    "could not write the X509-SVID files in %s: %s; will retry on the next change", target.dir, err
                )
                continue
            self._written[index] = digest
            log.info("wrote the X509-SVID files in %s", target.dir)
            if target.reload_argv:
                status = await run_reload_command(target.reload_argv, target.reload_timeout.total_seconds())
                if status is not None:
                    log.log(
                        logging.INFO if status == 0 else logging.ERROR,
                        "reload command %r for %s exited with status %d",
                        target.reload_argv[0],
                        target.dir,
                        status,
                    )
