"""Which SPIFFE IDs hold an admin entry (``admin: true``, docs/admin-api.md "mTLS admins"), cached per
process so that an mTLS admin request costs no datastore query.

The cache holds the set of those IDs, read with one query; memory is bounded by the admin entries an
operator made, not by how many callers knock. How stale an answer may be:

* **on the replica that made the change**: not at all. :class:`~ca.entries.RegistrationEntries`
  calls :meth:`AdminEntryIds.invalidate` after every entry change commits, and a read that was under
  way during the change is not cached (a generation counter tells);
* **on other replicas** (several CA processes on one PostgreSQL database): at most :data:`TTL_SECONDS`.
  The set is read again on the first question after it is that old, so removing an entry's admin flag
  (or the entry) stops its SVID's admin role everywhere within that bound.

Thread-safe: admin requests are answered in worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from spiffe_core.spiffe_id import SpiffeId

# How old the cached set may be when a question is answered from it (docs/admin-api.md).
TTL_SECONDS = 1.0


class AdminEntryIds:
    def __init__(
        self,
        load: Callable[[], frozenset[SpiffeId]],
        *,
        ttl: float = TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._ids: frozenset[SpiffeId] | None = None
        self._read_at = 0.0
        self._generation = 0

    def __contains__(self, spiffe_id: SpiffeId) -> bool:
        """Whether ``spiffe_id`` holds an admin entry, from a set read at most ``ttl`` ago (read now
        when it is older). Raises what the datastore raises."""
        with self._lock:
            if self._ids is not None and self._monotonic() - self._read_at < self._ttl:
                return spiffe_id in self._ids
            generation = self._generation
        read_at = self._monotonic()  # before the read: the age counts from what the read could see
        ids = self._load()
        with self._lock:
            if generation == self._generation:  # no change committed while it was read
                self._ids, self._read_at = ids, read_at
        return spiffe_id in ids

    def invalidate(self) -> None:
        """Forget the set (an entry changed here); the next question reads it again."""
        with self._lock:
            self._generation += 1
            self._ids = None
