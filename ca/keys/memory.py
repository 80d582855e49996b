"""Keys in process memory (DESIGN §3 "Key custody"): for tests and throwaway CAs. Lost on restart,
by design — a CA using it starts a new trust chain on every start."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from ca.keys.base import check_key_id
from spiffe_core.errors import AlreadyExists, NotFound
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key


class MemoryKeyManager:
    """A :class:`~ca.keys.base.KeyManager` over a dict; safe to share between threads."""

    def __init__(self) -> None:
        self._keys: dict[str, PrivateKey] = {}
        self._created: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def generate(self, key_id: str, key_type: KeyType) -> PrivateKey:
        check_key_id(key_id)
        with self._lock:
            if key_id in self._keys:
                raise AlreadyExists(f"key {key_id!r} exists already; choose a new key ID")
        key = generate_private_key(key_type)  # outside the lock: RSA generation takes a while
        with self._lock:
            if key_id in self._keys:
                raise AlreadyExists(f"key {key_id!r} exists already; choose a new key ID")
            self._keys[key_id] = key
            self._created[key_id] = datetime.now(UTC)
        return key

    def get(self, key_id: str) -> PrivateKey:
        check_key_id(key_id)
        with self._lock:
            key = self._keys.get(key_id)
        if key is None:
            raise NotFound(f"key {key_id!r} is not in the memory key manager (its keys are lost on restart)")
        return key

    def delete(self, key_id: str) -> None:
        check_key_id(key_id)
        with self._lock:
            self._keys.pop(key_id, None)
            self._created.pop(key_id, None)

    def list(self) -> tuple[tuple[str, datetime], ...]:
        with self._lock:
            return tuple(self._created.items())
