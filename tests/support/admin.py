"""Fakes for the admin app's guard in tests that exercise routes, not authentication: a caller that
presents itself as the local break-glass admin, and an audit trail that keeps events in a list."""

from __future__ import annotations

from dataclasses import dataclass, field

from ca.admin_auth import BreakGlassAuthenticator, Presented, Principal
from ca.store.records import AuditEvent


class LocalAdmin:
    """Authenticates every request as ``unix:uid=0`` on the local socket (TestClient has no socket)."""

    def authenticate(self, presented: Presented) -> Principal:
        return BreakGlassAuthenticator().authenticate(Presented(presented.source, peer_uid=0))


@dataclass
class RecordedAudit:
    events: list[AuditEvent] = field(default_factory=list)

    def record_refusal(self, event: AuditEvent) -> None:
        self.events.append(event)
