"""Cert-file mode: X509-SVIDs as files, for applications that speak neither SDS nor the Workload API
(DESIGN §4 "write cert/key/bundle files atomically and run a reload command on every change", §5
"cert files with reload hooks").

For each configured target directory the writer keeps three files:

* ``svid.pem`` — the X509-SVID chain, leaf first (0644);
* ``svid_key.pem`` — its private key, PKCS#8 PEM, created 0600 from the first byte;
* ``bundle.pem`` — the X.509 authorities of the agent's own trust domain (0644). Federated bundles
  are not written here: bundles of different trust domains are never merged into one file.

Each file is replaced atomically (temporary file, fsync, rename). The agent usually runs as root
and the target directory may belong to the workload, so nothing is ever done through a path the
workload could redirect: the directory is reached one component at a time with ``O_NOFOLLOW`` (a
symlink anywhere on the way is refused), every file operation is relative to that directory's file
descriptor (``O_NOFOLLOW``/``O_EXCL`` temporary files, ``renameat``, which replaces a planted symlink or
hard link instead of writing through it), and owner and mode are set on the open file (``fchown``,
``fchmod``) before the content is written. A directory belonging to a user other than root, the agent
or the target's ``owner`` is refused unless ``allow_foreign_dir`` is set.

Files are rewritten, and the target's reload command run, only when that target's content, owner or
mode changed — a change to another target's
SVID leaves it alone, and so does a restart that finds the same content on disk. The reload command
is split like a shell would but run without one, with a timeout; its exit status is logged, never the
files' content.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from sds.cache import CacheSnapshot, WorkloadCache, WorkloadSvid
from sds.config import CertFileTarget
from spiffe_core.errors import NotAuthorized

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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_target_directory(target: CertFileTarget, *, create: bool) -> int:
    """A file descriptor of ``target.dir``, reached from ``/`` one component at a time without following
    a symlink; missing directories are made 0755 when ``create``. The caller closes it.

    Raises :class:`NotAuthorized` when a component is a symlink or not a directory, or when the
    directory belongs to a user other than root, the agent or ``target.owner`` (unless
    ``allow_foreign_dir``); FileNotFoundError when it is missing and not ``create``."""
    directory = target.dir
    fd = os.open("/" if directory.is_absolute() else ".", _DIR_FLAGS)
    try:
        for index, name in enumerate(directory.parts[1:] if directory.is_absolute() else directory.parts):
            try:
                following = _open_directory_at(fd, name, create=create)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                where = Path(*directory.parts[: index + (2 if directory.is_absolute() else 1)])
                raise NotAuthorized(
                    f"cert_files dir {directory}: {where} is a symlink or not a directory; cert files are never "
                    "written through a symlink — configure the real path"
                ) from err
            os.close(fd)
            fd = following
        owner = os.fstat(fd).st_uid
        trusted = {0, os.geteuid(), os.geteuid() if target.owner is None else target.owner}
        if owner not in trusted and not target.allow_foreign_dir:
            raise NotAuthorized(
                f"cert_files dir {directory} belongs to uid {owner}, neither root, the agent nor the target's owner; "
                "that user could redirect what the agent writes — give the directory to root or the owner, or set "
                "allow_foreign_dir = true for this target"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_directory_at(parent: int, name: str, *, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):  # made meanwhile: opened below, O_NOFOLLOW still applies
        os.mkdir(name, 0o755, dir_fd=parent)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    os.fchmod(fd, 0o755)  # mkdir's mode is filtered by the umask; workloads must reach their files
    return fd


def _expected(target: CertFileTarget) -> tuple[int, int | None]:
    return (os.geteuid() if target.owner is None else target.owner, target.group)


def _read_at(dir_fd: int, name: str, mode: int, target: CertFileTarget) -> bytes | None:
    """The content of a regular file ``name`` with the owner and mode ``target`` asks for, else None
    (a symlink, a FIFO planted to block the agent, or a file to be rewritten)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        uid, gid = _expected(target)
        if (
            not stat.S_ISREG(info.st_mode)
            or stat.S_IMODE(info.st_mode) != mode
            or info.st_uid != uid
            or (gid is not None and info.st_gid != gid)
        ):
            return None
        return file.read()


def read_files(target: CertFileTarget) -> TargetFiles | None:
    """What a target directory holds now, or None when any of the three files is missing, unreadable,
    or not a regular file with the configured owner and mode."""
    try:
        dir_fd = open_target_directory(target, create=False)
    except (OSError, NotAuthorized):
        return None
    try:
        key = _read_at(dir_fd, KEY_FILE, target.key_mode, target)
        chain = _read_at(dir_fd, SVID_FILE, target.cert_mode, target)
        bundle = _read_at(dir_fd, BUNDLE_FILE, target.cert_mode, target)
    finally:
        os.close(dir_fd)
    if key is None or chain is None or bundle is None:
        return None
    return TargetFiles(chain_pem=chain, key_pem=key, bundle_pem=bundle)


def _write_at(dir_fd: int, name: str, data: bytes, mode: int, target: CertFileTarget) -> None:
    """Replace ``name`` in the directory atomically: a fresh 0600 temporary file (never an existing one),
    given its owner and mode before any byte is written, fsynced, then renamed over ``name``."""
    while True:
        temporary = f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue  # someone else's file under that name: pick another
    try:
        with os.fdopen(fd, "wb") as file:
            if target.owner is not None or target.group is not None:
                os.fchown(
                    fd, -1 if target.owner is None else target.owner, -1 if target.group is None else target.group
                )
            os.fchmod(fd, mode)
            file.write(data)
            file.flush()
            os.fsync(fd)
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def write_files(target: CertFileTarget, files: TargetFiles) -> None:
    """Replace the three files atomically; the key first, so a new chain never sits next to an old key.
    Raises OSError, or :class:`NotAuthorized` for a directory that is not safe to write into."""
    dir_fd = open_target_directory(target, create=True)
    try:
        _write_at(dir_fd, KEY_FILE, files.key_pem, target.key_mode, target)
        _write_at(dir_fd, SVID_FILE, files.chain_pem, target.cert_mode, target)
        _write_at(dir_fd, BUNDLE_FILE, files.bundle_pem, target.cert_mode, target)
        with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
                on_disk = await asyncio.to_thread(read_files, target)
                self._written[index] = None if on_disk is None else on_disk.digest()
            if self._written[index] == digest:
                continue
            try:
                await asyncio.to_thread(write_files, target, files)
            except (OSError, NotAuthorized) as err:
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
