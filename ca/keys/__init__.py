"""Key custody for the CA's authorities: the :class:`KeyManager` interface and its backends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ca.keys.base import KeyManager
from ca.keys.disk import DiskKeyManager, load_kek
from ca.keys.memory import MemoryKeyManager

if TYPE_CHECKING:
    from ca.config import KeyManagerConfig


def open_key_manager(config: KeyManagerConfig, data_dir: Path) -> KeyManager:
    """The key manager the config names; blocking (reads or creates the key-encryption key)."""
    if config.kind == "memory":
        return MemoryKeyManager()
    kek = load_kek(config.kek_file, config.kek_env or None, create=True)
    return DiskKeyManager(data_dir / "keys", kek)


__all__ = ["DiskKeyManager", "KeyManager", "MemoryKeyManager", "open_key_manager"]
