"""An in-memory x509pop challenge ledger, for tests of :mod:`bridge.x509pop` that need no datastore (the
CA's own ledger is ``ca.bridge_attestation.DatastoreChallenges``)."""

from __future__ import annotations

import secrets
from datetime import datetime

from bridge.x509pop_challenge import KEY_BYTES


class MemoryChallengeLedger:
    """One random key, and the digests of spent nonces in a set."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(KEY_BYTES)
        self.spent: dict[str, datetime] = {}

    def key(self) -> bytes:
        return self._key

    def spend(self, digest: str, expires_at: datetime) -> bool:
        if digest in self.spent:
            return False
        self.spent[digest] = expires_at
        return True
