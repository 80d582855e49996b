"""The key-manager interface: where the CA's private keys live (DESIGN §3 "Key custody").

The CA asks for keys by an opaque ID it chose; it never handles key files itself. ``disk`` keeps
PKCS#8 files encrypted at rest, ``memory`` is for tests and throwaway CAs. A key manager whose keys
never leave a device (Vault transit) implements the same three calls.
"""

from __future__ import annotations

import re
from typing import Protocol

from spiffe_core.errors import InvalidArgument
from spiffe_core.keys import KeyType, PrivateKey

_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def check_key_id(key_id: str) -> str:
    """Key IDs become file names: refuse anything that could walk out of the key directory."""
    if not _KEY_ID.match(key_id) or key_id in (".", ".."):
        raise InvalidArgument(f"key ID {key_id!r} must be 1-128 characters of A-Z, a-z, 0-9, '.', '-' or '_'")
    return key_id


class KeyManager(Protocol):
    def generate(self, key_id: str, key_type: KeyType) -> PrivateKey:
        """Create and keep a new key; AlreadyExists if the ID is taken."""
        ...

    def get(self, key_id: str) -> PrivateKey:
        """The key with this ID; NotFound if there is none."""
        ...

    def delete(self, key_id: str) -> None:
        """Forget the key; deleting a missing key is not an error."""
        ...
