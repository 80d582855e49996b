"""Keys on disk, encrypted at rest: one PKCS#8 PEM file per key, encrypted with a key-encryption key.

cryptography's ``BestAvailableEncryption`` writes PKCS#8 ``ENCRYPTED PRIVATE KEY`` with PBES2
(PBKDF2-HMAC-SHA256 and AES-256-CBC). Files are created 0600 from the first byte, written to a
temporary name and renamed, so a crash leaves either the old state or the whole new file. A key file
readable by group or others is refused rather than silently used.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.keys.base import check_key_id
from spiffe_core.errors import AlreadyExists, ConfigError, NotFound
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key

MIN_KEK_BYTES = 32


class DiskKeyManager:
    def __init__(self, directory: Path, kek: bytes) -> None:
        if len(kek) < MIN_KEK_BYTES:
            raise ConfigError(f"the key-encryption key is {len(kek)} bytes; at least {MIN_KEK_BYTES} are required")
        self._directory = directory
        self._kek = kek
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key_id: str) -> Path:
        return self._directory / f"{check_key_id(key_id)}.pem"

    def generate(self, key_id: str, key_type: KeyType) -> PrivateKey:
        path = self._path(key_id)
        if path.exists():
            raise AlreadyExists(f"key {key_id!r} exists already in {self._directory}")
        key = generate_private_key(key_type)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._kek),
        )
        fd, tmp_name = tempfile.mkstemp(dir=self._directory, prefix=f".{path.name}.", suffix=".tmp")  # 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp_name, path)  # fails if another writer got there first: never overwrite a key
        except FileExistsError:
            raise AlreadyExists(f"key {key_id!r} exists already in {self._directory}") from None
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        return key

    def get(self, key_id: str) -> PrivateKey:
        path = self._path(key_id)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise NotFound(f"key {key_id!r} is not in {self._directory}") from None
        if stat.S_IMODE(mode) & 0o077:
            raise ConfigError(f"key file {path} is readable by group or others; run 'chmod 600 {path}'")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=self._kek)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"cannot decrypt key {key_id!r} in {path}: wrong key-encryption key?") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ConfigError(f"key file {path} holds a {type(key).__name__}; only EC and RSA keys are used")
        return key

    def delete(self, key_id: str) -> None:
        self._path(key_id).unlink(missing_ok=True)


def load_kek(
    file: Path | None, env_var: str | None, environ: Mapping[str, str] | None = None, *, create: bool
) -> bytes:
    """The key-encryption key: from an environment variable if one is named, else from a file (0600 or
    0400), created with 32 random bytes on first run when ``create`` is set."""
    env = os.environ if environ is None else environ
    if env_var:
        from_env = env.get(env_var, "").strip()
        if not from_env:
            raise ConfigError(f"ca.key_manager.kek_env names {env_var!r}, but that environment variable is empty")
        return from_env.encode()
    if file is None:
        raise ConfigError("ca.key_manager needs kek_file or kek_env for the disk key manager")
    if not file.exists():
        if not create:
            raise ConfigError(f"key-encryption key file {file} does not exist")
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(MIN_KEK_BYTES).hex() + "\n")
    if stat.S_IMODE(file.stat().st_mode) & 0o077:
        raise ConfigError(f"key-encryption key file {file} is readable by group or others; run 'chmod 600 {file}'")
    value = file.read_bytes().strip()
    if len(value) < MIN_KEK_BYTES:
        raise ConfigError(f"key-encryption key file {file} holds {len(value)} bytes; at least {MIN_KEK_BYTES} needed")
    return value
