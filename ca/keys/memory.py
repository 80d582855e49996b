"""Keys in process memory: for tests and throwaway CAs. Lost on restart, by design."""

from __future__ import annotations

import threading

from ca.keys.base import check_key_id
from spiffe_core.errors import AlreadyExists, NotFound
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key


class MemoryKeyManager:
    def __init__(self) -> None:
        self._keys: dict[str, PrivateKey] = {}
        self._lock = threading.Lock()

    def generate(self, key_id: str, key_type: KeyType) -> PrivateKey:
        check_key_id(key_id)
        key = generate_private_key(key_type)
        with self._lock:
            if key_id in self._keys:
                raise AlreadyExists(f"key {key_id!r} exists already")
            self._keys[key_id] = key
        return key

    def get(self, key_id: str) -> PrivateKey:
        with self._lock:
            try:
                return self._keys[check_key_id(key_id)]
            except KeyError:
                raise NotFound(f"key {key_id!r} is not in the memory key manager (keys are lost on restart)") from None

    def delete(self, key_id: str) -> None:
        with self._lock:
            self._keys.pop(check_key_id(key_id), None)
