"""The CA datastore: SQLite (WAL) embedded, PostgreSQL shared by CA replicas (DESIGN §1, §3).

Usage::

    db = Database.open("sqlite:////var/lib/trustmesh/ca.db")   # or postgresql://…
    db.migrate()                                               # at start-up; safe from many replicas
    with db.transaction() as session:                          # one unit of work
        entry = RegistrationEntryRepository(session).add(spec, now)
        AuditLogRepository(session).append(AuditEvent(now, actor, "entry.add", entry.id, "ok"))

Repositories return the frozen records of :mod:`ca.store.records`; the ORM models stay private here.
A taken unique key raises ``AlreadyExists``, a missing row ``NotFound``, an unreachable database
``UpstreamUnavailable``.
"""

from __future__ import annotations

from ca.store.engine import Database
from ca.store.records import (
    Actor,
    Agent,
    AuditCheckpoint,
    AuditEvent,
    AuditQuery,
    AuditRecord,
    AuthorityKind,
    AuthorityRecord,
    CertificateQuery,
    ChainCheck,
    EntrySpec,
    IssuedCertificate,
    JoinToken,
    JoinTokenQuery,
    RegistrationEntry,
)
from ca.store.repositories import (
    AgentRepository,
    AuditCheckpointRepository,
    AuditLogRepository,
    AuthorityRepository,
    IssuedCertificateRepository,
    JoinTokenRepository,
    RegistrationEntryRepository,
    TrustBundleStateRepository,
)
from ca.store.repositories.join_tokens import hash_join_token

__all__ = [
    "Actor",
    "Agent",
    "AgentRepository",
    "AuditCheckpoint",
    "AuditCheckpointRepository",
    "AuditEvent",
    "AuditLogRepository",
    "AuditQuery",
    "AuditRecord",
    "AuthorityKind",
    "AuthorityRecord",
    "AuthorityRepository",
    "CertificateQuery",
    "ChainCheck",
    "Database",
    "EntrySpec",
    "IssuedCertificate",
    "IssuedCertificateRepository",
    "JoinToken",
    "JoinTokenQuery",
    "JoinTokenRepository",
    "RegistrationEntry",
    "RegistrationEntryRepository",
    "TrustBundleStateRepository",
    "hash_join_token",
]
