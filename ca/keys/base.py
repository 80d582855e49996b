"""The key-manager interface: where the CA's private keys live (DESIGN §3 "Key custody").

The CA asks for keys by an opaque ID it chose (``x509-<uuid>``, ``jwt-<uuid>``); it never handles key
files itself. ``disk`` keeps PKCS#8 files encrypted at rest, ``memory`` is for tests and throwaway
CAs. A key manager whose keys never leave a device (Vault transit) implements the same three calls.
Every call may block (file I/O, RSA generation): callers on an event loop use ``asyncio.to_thread``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Protocol

from spiffe_core.errors import InvalidArgument
from spiffe_core.keys import KeyType, PrivateKey

MAX_KEY_ID_CHARS = 128
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def check_key_id(key_id: str) -> str:
    """Return ``key_id`` if it is 1-128 characters of ``A-Z a-z 0-9 . _ -`` and not ``.`` or ``..``.

    Key IDs become file names (and object names in remote key stores), so anything that could walk
    out of the key directory or hide a newline is refused. Raises InvalidArgument."""
    if not _KEY_ID.fullmatch(key_id) or key_id in (".", ".."):
        raise InvalidArgument(
            f"key ID {key_id!r} is not allowed; key IDs are 1-{MAX_KEY_ID_CHARS} characters of A-Z, a-z, 0-9, "
            "'.', '-' or '_' and not '.' or '..' — use e.g. 'x509-<uuid>'"
        )
    return key_id


class KeyManager(Protocol):
    """Custody of the CA's private keys, addressed by caller-chosen IDs (see :func:`check_key_id`)."""

    def generate(self, key_id: str, key_type: KeyType) -> PrivateKey:
        """Create a new key and keep it before returning it; AlreadyExists if the ID is taken,
        InvalidArgument for a malformed ID."""
        ...

    def get(self, key_id: str) -> PrivateKey:
        """The key with this ID; NotFound if there is none, ConfigError if it cannot be read safely."""
        ...

    def delete(self, key_id: str) -> None:
        """Forget the key; deleting a missing key is not an error (retried cleanups stay harmless)."""
        ...

    def list(self) -> tuple[tuple[str, datetime], ...]:
        """Every key ID held, with when its key was created: for sweeping keys that no record names
        (a CA killed between writing a key and committing its authority)."""
        ...
