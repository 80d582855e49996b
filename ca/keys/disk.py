"""Keys on disk, encrypted at rest (DESIGN §3 "Key custody"): one PKCS#8 PEM file per key.

Each key is ``<directory>/<key ID>.pem``, an ``ENCRYPTED PRIVATE KEY`` written by cryptography's
``BestAvailableEncryption`` with the key-encryption key (KEK) as the password. With cryptography 50
that is PBES2: PBKDF2-HMAC-SHA256 (random 16-byte salt, 2048 iterations) deriving an AES-256-CBC key.
The low iteration count is acceptable because the KEK is not a human password: it must be at least 32
bytes and the generated one is 32 random bytes (hex), so guessing it is no easier than guessing the
AES key itself.

Files are created 0600 from their first byte (``O_CREAT | O_EXCL``), fsynced, then hard-linked to
their final name, so a crash leaves either no key file or the whole one, and two writers of the same
key ID cannot overwrite each other (a rename would). Leftover temporaries are hidden ``.tmp`` files
that reads never look at; stale ones are removed when a manager opens the directory. A key file or
directory that group or others can access, or a symbolic link, is refused rather than used.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.files import read_private_file
from ca.keys.base import check_key_id
from spiffe_core.errors import AlreadyExists, ConfigError, NotFound
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key

MIN_KEK_BYTES = 32
# A write takes milliseconds; a temporary this old was left by a crash, not by a concurrent writer.
STALE_TEMPORARY_SECONDS = 600
_TEMP_SUFFIX = ".tmp"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class DiskKeyManager:
    """A :class:`~ca.keys.base.KeyManager` keeping encrypted PKCS#8 files in one private directory.

    Creates ``directory`` (0700) if missing; ConfigError if the KEK is shorter than 32 bytes or the
    directory is accessible by group or others."""

    def __init__(self, directory: Path, kek: bytes) -> None:
        if len(kek) < MIN_KEK_BYTES:
            raise ConfigError(
                f"the key-encryption key is {len(kek)} bytes; at least {MIN_KEK_BYTES} are required — "
                "generate one with 'openssl rand -hex 32'"
            )
        _ensure_private_directory(directory)
        self._directory = directory
        self._kek = kek
        _remove_stale_temporaries(directory, time.time() - STALE_TEMPORARY_SECONDS)

    def _path(self, key_id: str) -> Path:
        return self._directory / f"{check_key_id(key_id)}.pem"

    def generate(self, key_id: str, key_type: KeyType) -> PrivateKey:
        path = self._path(key_id)
        if path.exists():
            raise AlreadyExists(f"key {key_id!r} exists already in {self._directory}; choose a new key ID")
        key = generate_private_key(key_type)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._kek),
        )
        if not _publish_exclusively(path, pem):
            raise AlreadyExists(f"key {key_id!r} exists already in {self._directory}; choose a new key ID")
        return key

    def get(self, key_id: str) -> PrivateKey:
        path = self._path(key_id)
        try:
            data = read_private_file(path, what="key file", chmod="600")
        except FileNotFoundError:
            raise NotFound(f"key {key_id!r} is not in {self._directory}") from None
        try:
            key = serialization.load_pem_private_key(data, password=self._kek)
        except TypeError as err:  # cryptography's way of saying "this PEM has no encryption"
            raise ConfigError(
                f"key file {path} is not encrypted; the disk key manager keeps keys only as encrypted PKCS#8 — "
                "restore the encrypted file or delete this one"
            ) from err
        except ValueError as err:
            raise ConfigError(
                f"cannot decrypt key {key_id!r} in {path}: wrong key-encryption key? Check "
                "ca.key_manager.kek_file / kek_env against the one the keys were written with"
            ) from err
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ConfigError(f"key file {path} holds a {type(key).__name__}; the CA signs only with EC or RSA keys")
        return key

    def list(self) -> tuple[tuple[str, datetime], ...]:
        keys = []
        for path in self._directory.glob("*.pem"):
            try:
                created = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            except FileNotFoundError:
                continue  # deleted meanwhile
            keys.append((path.stem, created))
        return tuple(keys)

    def delete(self, key_id: str) -> None:
        path = self._path(key_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_directory(self._directory)


def load_kek(
    file: Path | None,
    env_var: str | None,
    *,
    create_if_missing: bool = False,
    environ: Mapping[str, str] | None = None,
    keys_dir: Path | None = None,
) -> bytes:
    """The key-encryption key, from exactly one of: the environment variable named ``env_var`` (read
        from ``environ``, default ``os.environ``) or ``file`` (mode 0600 or 0400; with ``create_if_missing``
        a missing file is created with 32 random bytes, hex-encoded — never while ``keys_dir`` already holds
    keys, which only the lost KEK can decrypt). Surrounding whitespace is dropped;
        at least 32 bytes must remain. Raises ConfigError naming the source and the fix; never shows the key."""
    if file is not None and env_var:
        raise ConfigError(
            f"both a key-encryption key file ({file}) and environment variable ({env_var}) are configured; "
            "set only one of ca.key_manager.kek_file and ca.key_manager.kek_env"
        )
    if env_var:
        env = os.environ if environ is None else environ
        if env_var not in env:
            raise ConfigError(
                f"environment variable {env_var} (named by ca.key_manager.kek_env) is not set; export it with "
                "the key-encryption key, e.g. the output of 'openssl rand -hex 32'"
            )
        return _checked_kek(env[env_var].strip().encode(), f"environment variable {env_var}")
    if file is None:
        raise ConfigError(
            "no key-encryption key is configured for the disk key manager; set ca.key_manager.kek_file "
            "or ca.key_manager.kek_env"
        )
    try:
        data = read_private_file(file, what="key-encryption key file", chmod="600", modes=(0o600, 0o400))
    except FileNotFoundError:
        existing = sorted(keys_dir.glob("*.pem")) if keys_dir is not None and keys_dir.is_dir() else []
        if existing:
            raise ConfigError(
                f"key-encryption key file {file} does not exist, but {keys_dir} holds {len(existing)} keys "
                "encrypted with one; restore that file (a new key-encryption key cannot decrypt them) or set "
                "ca.key_manager.kek_file / kek_env to where it is kept. To start a new trust domain root on "
                f"purpose instead, move {keys_dir} away first"
            ) from None
        if not create_if_missing:
            raise ConfigError(
                f"key-encryption key file {file} does not exist; create it with "
                f"'(umask 077; openssl rand -hex 32 > {file})' or enable ca.key_manager.create_kek_if_missing"
            ) from None
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _publish_exclusively(file, secrets.token_hex(MIN_KEK_BYTES).encode() + b"\n")  # loser reads the winner's
        data = read_private_file(file, what="key-encryption key file", chmod="600", modes=(0o600, 0o400))
    return _checked_kek(data.strip(), f"key-encryption key file {file}")


def _checked_kek(kek: bytes, source: str) -> bytes:
    if len(kek) < MIN_KEK_BYTES:
        raise ConfigError(
            f"{source} holds {len(kek)} bytes; a key-encryption key needs at least {MIN_KEK_BYTES} — "
            "use e.g. the output of 'openssl rand -hex 32'"
        )
    return kek


def _ensure_private_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        if not directory.is_dir():
            raise ConfigError(f"key directory {directory} is not a directory; move that file away") from None
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"key directory {directory} is accessible by group or others (mode {mode:04o}); "
                f"run 'chmod 700 {directory}'"
            ) from None


def _publish_exclusively(path: Path, content: bytes) -> bool:
    """Write ``content`` to ``path`` atomically, only if ``path`` does not exist yet; False if it did.

    The temporary is created 0600 with O_EXCL, fsynced, then hard-linked to ``path`` (link, unlike
    rename, fails when the target exists) and the directory is fsynced so the name survives a crash."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}{_TEMP_SUFFIX}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        _fsync_directory(path.parent)
        return True
    finally:
        temporary.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory: Path, older_than: float) -> None:
    """Delete temporaries a crashed writer left behind; fresh ones may belong to a live writer."""
    for entry in directory.glob(f".*{_TEMP_SUFFIX}"):
        try:
            if entry.lstat().st_mtime < older_than:
                entry.unlink()
        except FileNotFoundError:
            continue
