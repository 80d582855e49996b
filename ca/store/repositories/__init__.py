"""One repository per aggregate of the CA datastore; each takes the unit of work's ``Session`` and never
commits (``Database.transaction`` does)."""

from __future__ import annotations

from ca.store.repositories.agents import AgentRepository
from ca.store.repositories.audit import AuditLogRepository
from ca.store.repositories.audit_checkpoints import AuditCheckpointRepository
from ca.store.repositories.authorities import AuthorityRepository
from ca.store.repositories.bundle_state import TrustBundleStateRepository
from ca.store.repositories.certificates import IssuedCertificateRepository
from ca.store.repositories.entries import RegistrationEntryRepository
from ca.store.repositories.federation import FederationRepository
from ca.store.repositories.join_tokens import JoinTokenRepository
from ca.store.repositories.mappings import IdentityMappingRepository
from ca.store.repositories.shared_secrets import SharedSecretRepository
from ca.store.repositories.x509pop_nonces import UsedNonceRepository

__all__ = [
    "AgentRepository",
    "AuditCheckpointRepository",
    "AuditLogRepository",
    "AuthorityRepository",
    "FederationRepository",
    "IdentityMappingRepository",
    "IssuedCertificateRepository",
    "JoinTokenRepository",
    "RegistrationEntryRepository",
    "SharedSecretRepository",
    "TrustBundleStateRepository",
    "UsedNonceRepository",
]
