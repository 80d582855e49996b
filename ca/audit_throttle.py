"""How many refusals the audit log records one by one, so that no caller can flood it.

Every refused attempt is audited (DESIGN §3 "Admin API"; issue 8), and refused callers are exactly the
ones who may try again as fast as they can: an attacker spraying join tokens, a banned agent
reconnecting, a scanner cycling through addresses. So a refusal is recorded on its own only while its
source (the actor the record names: ``attestation:<address>``, an agent's SPIFFE ID, an admin caller)
is within :data:`PER_SOURCE` and all sources together within :data:`OVERALL`; beyond that it is only
counted, and :meth:`RefusalThrottle.drain` hands the counts out for one "suppressed" summary record per
source (:meth:`ca.audit.AuditTrail.flush_suppressed`, run by the audit task every checkpoint interval).

The counts are bounded too: past :data:`MAX_SUPPRESSED_SOURCES` distinct sources, further ones are
counted together under :data:`OTHER_SOURCES`. Token buckets as in :mod:`ca.ratelimit`; thread-safe,
because refusals are recorded from the node API's worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ca.ratelimit import KeyedRateLimiter, Monotonic, Rate
from ca.store.records import AuditEvent

# At most 20 refusals a minute from one source are recorded one by one (a burst of 20 at once)...
PER_SOURCE = Rate(20 / 60, 20)
# ...and at most 600 a minute from all sources together (however many addresses an attacker has).
OVERALL = Rate(10.0, 600)
MAX_SUPPRESSED_SOURCES = 1000
OTHER_SOURCES = "(other sources)"
_ALL = "all"


@dataclass(slots=True)
class Suppressed:
    """Refusals from ``source`` that were counted instead of recorded, by action, between two times."""

    source: str
    first_at: datetime
    last_at: datetime
    count: int = 0
    actions: dict[str, int] = field(default_factory=dict)

    def add(self, event: AuditEvent) -> None:
        self.count += 1
        self.actions[event.action] = self.actions.get(event.action, 0) + 1
        self.first_at = min(self.first_at, event.at)
        self.last_at = max(self.last_at, event.at)

    @property
    def by_action(self) -> Mapping[str, int]:
        return dict(sorted(self.actions.items()))


class RefusalThrottle:
    def __init__(
        self,
        per_source: Rate = PER_SOURCE,
        overall: Rate = OVERALL,
        *,
        max_sources: int = MAX_SUPPRESSED_SOURCES,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        self._per_source = KeyedRateLimiter[str](per_source, monotonic=monotonic)
        self._overall = KeyedRateLimiter[str](overall, max_keys=1, monotonic=monotonic)
        self._max_sources = max_sources
        self._suppressed: dict[str, Suppressed] = {}
        self._lock = threading.Lock()

    def admit(self, event: AuditEvent) -> bool:
        """True when ``event`` (a refusal) may be recorded now; otherwise it is counted for the summary."""
        source = event.actor.name
        with self._lock:
            if self._per_source.take(source) == 0 and self._overall.take(_ALL) == 0:
                return True
            if source not in self._suppressed and len(self._suppressed) >= self._max_sources:
                source = OTHER_SOURCES
            tally = self._suppressed.get(source)
            if tally is None:
                tally = self._suppressed[source] = Suppressed(source, event.at, event.at)
            tally.add(event)
            return False

    def drain(self) -> list[Suppressed]:
        """The refusals counted since the last drain, one tally per source; forgets them."""
        with self._lock:
            drained, self._suppressed = list(self._suppressed.values()), {}
        return drained
