"""Key custody for the CA's authorities (DESIGN §3 "Key custody").

A :class:`KeyManager` creates, returns and deletes private keys by caller-chosen IDs::

    manager = open_key_manager(config.ca.key_manager, config.server.data_dir)
    key = manager.generate("x509-3f2a…", KeyType.EC_P256)   # kept before it is returned
    same = manager.get("x509-3f2a…")
    manager.delete("x509-3f2a…")                             # idempotent

``disk`` (:class:`DiskKeyManager`) keeps encrypted PKCS#8 files under ``<data_dir>/keys``;
``memory`` (:class:`MemoryKeyManager`) keeps them in the process; ``vault-transit``
(:class:`VaultTransitKeyManager`) keeps them in Vault, which signs (docs/vault.md). All calls block.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ca.keys.base import KeyManager, check_key_id
from ca.keys.disk import DiskKeyManager, load_kek
from ca.keys.memory import MemoryKeyManager
from ca.keys.vault_transit import VaultTransitKeyManager
from ca.vault import VaultClient
from spiffe_core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ca.config import KeyManagerConfig, VaultConfig

KEYS_SUBDIRECTORY = "keys"


def open_key_manager(
    config: KeyManagerConfig,
    data_dir: Path,
    environ: Mapping[str, str] | None = None,
    vault: VaultConfig | None = None,
) -> KeyManager:
    """The key manager ``config`` names. For ``disk`` this reads the key-encryption key (creating its
    file on first run when ``create_kek_if_missing`` is set, never beside existing keys) and keys live in
    ``config.directory`` (default ``<data_dir>/keys``; CA replicas on one database share one);
    ``vault-transit`` reads the Vault credentials ``vault`` names (from ``environ`` for ``token_env``).
    Blocking; raises ConfigError for a missing, unsafe or too short key-encryption key or Vault
    credential."""
    if config.kind == "memory":
        return MemoryKeyManager()
    if config.kind == "vault-transit":
        if vault is None:
            raise ConfigError("ca.key_manager.kind 'vault-transit' needs the [vault] section; set vault.address")
        client = VaultClient(vault, "vault-transit key manager", "ca.key_manager.transit_mount", environ)
        return VaultTransitKeyManager(client, config.transit_mount, config.key_prefix)
    directory = config.directory or data_dir / KEYS_SUBDIRECTORY
    kek = load_kek(
        config.kek_file,
        config.kek_env or None,
        create_if_missing=config.create_kek_if_missing,
        environ=environ,
        keys_dir=directory,
    )
    return DiskKeyManager(directory, kek)


__all__ = [
    "DiskKeyManager",
    "KeyManager",
    "MemoryKeyManager",
    "VaultTransitKeyManager",
    "check_key_id",
    "load_kek",
    "open_key_manager",
]
