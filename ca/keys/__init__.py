"""Key custody for the CA's authorities (DESIGN §3 "Key custody").

A :class:`KeyManager` creates, returns and deletes private keys by caller-chosen IDs::

    manager = open_key_manager(config.ca.key_manager, config.server.data_dir)
    key = manager.generate("x509-3f2a…", KeyType.EC_P256)   # kept before it is returned
    same = manager.get("x509-3f2a…")
    manager.delete("x509-3f2a…")                             # idempotent

``disk`` (:class:`DiskKeyManager`) keeps encrypted PKCS#8 files under ``<data_dir>/keys``;
``memory`` (:class:`MemoryKeyManager`) keeps them in the process. All calls block.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ca.keys.base import KeyManager, check_key_id
from ca.keys.disk import DiskKeyManager, load_kek
from ca.keys.memory import MemoryKeyManager

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ca.config import KeyManagerConfig

KEYS_SUBDIRECTORY = "keys"


def open_key_manager(config: KeyManagerConfig, data_dir: Path, environ: Mapping[str, str] | None = None) -> KeyManager:
    """The key manager ``config`` names. For ``disk`` this reads the key-encryption key (creating its
    file on first run when ``create_kek_if_missing`` is set, never beside existing keys) and keys live in
    ``<data_dir>/keys``.
    Blocking; raises ConfigError for a missing, unsafe or too short key-encryption key."""
    if config.kind == "memory":
        return MemoryKeyManager()
    directory = data_dir / KEYS_SUBDIRECTORY
    kek = load_kek(
        config.kek_file,
        config.kek_env or None,
        create_if_missing=config.create_kek_if_missing,
        environ=environ,
        keys_dir=directory,
    )
    return DiskKeyManager(directory, kek)


__all__ = ["DiskKeyManager", "KeyManager", "MemoryKeyManager", "check_key_id", "load_kek", "open_key_manager"]
