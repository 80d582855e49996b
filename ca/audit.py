"""The audit trail's use cases: recording what happened outside another unit of work.

A change and its audit record commit together (the domain services append in their own transaction);
what has no transaction of its own — a refused request, a failed attempt — is recorded here in one.
"""

from __future__ import annotations

from ca.store.engine import Database
from ca.store.records import AuditEvent, AuditRecord
from ca.store.repositories import AuditLogRepository


class AuditTrail:
    def __init__(self, database: Database) -> None:
        self._database = database

    def record(self, event: AuditEvent) -> AuditRecord:
        """Append ``event`` in a unit of work of its own."""
        with self._database.transaction() as session:
            return AuditLogRepository(session).append(event)
