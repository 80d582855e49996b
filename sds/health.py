"""Whether the agent is ready, and the state ``/metrics`` shows (docs/observability.md "Agent health").

**Ready** means the agent can do its job now and will keep doing it:

1. it holds its own X509-SVID, unexpired (it has attested, or loaded a saved one);
2. it holds its trust domain's bundle for workloads (from the CA's Sync stream, or saved from one);
3. the CA was reached recently: the Sync stream is delivering now, or it was within
   ``health.ca_contact_window`` (5 minutes by default). A CA outage longer than that makes the agent not
   ready — it keeps serving what it holds, but nothing new (entries, rotations, revocations) reaches it.

**Live** means only that the process answers. The reasons are one line each, for ``/ready`` and for
``trustmesh-agent healthcheck``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from sds.cache import CacheSnapshot, WorkloadCache
from sds.manager import SyncStatus
from sds.node_client import AgentCredentials
from spiffe_core.clock import Clock
from spiffe_core.errors import FailedPrecondition
from spiffe_core.x509_svid import X509Svid


class OwnCredentials(Protocol):
    """The agent's identity (:class:`sds.agent_svid.AgentIdentity`); FailedPrecondition before it has one."""

    def get_current(self) -> AgentCredentials: ...


class AgentHealth:
    """Reads the agent's state where it lives (identity, cache, Sync status); holds none of its own."""

    def __init__(
        self,
        *,
        identity: OwnCredentials,
        cache: WorkloadCache,
        sync: SyncStatus,
        clock: Clock,
        ca_contact_window: timedelta,
    ) -> None:
        self._identity = identity
        self._cache = cache
        self.sync = sync
        self._clock = clock
        self._window = ca_contact_window
        self._started_at = clock.now()

    def agent_svid(self) -> X509Svid | None:
        """The agent's own X509-SVID; None before it has one."""
        try:
            return self._identity.get_current().svid
        except FailedPrecondition:
            return None

    def snapshot(self) -> CacheSnapshot:
        return self._cache.get_snapshot()

    def bundle_age(self) -> timedelta:
        """How long since the CA last confirmed the agent's bundle: zero while the Sync stream delivers,
        else since the last contact, or since the agent started when it has not reached the CA yet."""
        if self.sync.connected:
            return timedelta(0)
        return self._clock.now() - (self.sync.last_contact_at or self._started_at)

    def not_ready_reason(self) -> str | None:
        """Why the agent is not ready (module docstring), or None when it is."""
        now = self._clock.now()
        svid = self.agent_svid()
        if svid is None:
            return "the agent has no X509-SVID yet (attesting with the CA)"
        expiry = svid.leaf.not_valid_after_utc
        if expiry <= now:
            return f"the agent's X509-SVID expired at {expiry.isoformat()} and was not renewed"
        if self.snapshot().bundle is None:
            return "the agent has no trust bundle from the CA yet"
        if self.sync.connected:
            return None
        last = self.sync.last_contact_at
        if last is not None and now - last <= self._window:
            return None
        since = "since the agent started" if last is None else f"since {last.isoformat()}"
        why = f" (last error: {self.sync.last_error})" if self.sync.last_error else ""
        window = int(self._window.total_seconds())
        return f"the CA has not been reached {since}, longer than health.ca_contact_window ({window}s){why}"
