"""The CA datastore's tables (DESIGN §1 "the datastore is the source of truth", §3), private to ``ca.store``.

Other packages never see these classes: repositories turn rows into the frozen records of
:mod:`ca.store.records`. Every timestamp is stored in UTC through :class:`UtcDateTime`, so SQLite (which
has no time zones) and PostgreSQL (``timestamptz``) both hand back aware datetimes. Constraint names come
from one naming convention, so migrations can address them by name on every dialect.

The initial Alembic revision creates exactly these tables; ``tests/integration/store`` checks that the
migrations and this module never drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from spiffe_core.errors import InvalidArgument

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SPIFFE IDs are at most 2048 bytes (SPIFFE-ID.md); trust domain names at most 255.
SPIFFE_ID_LENGTH = 2048
TRUST_DOMAIN_LENGTH = 255
SHA256_HEX_LENGTH = 64
# An audit reason is one line a person reads; longer ones are cut when recorded, as are the other texts.
AUDIT_REASON_LENGTH = 1024
AUDIT_METHOD_LENGTH = 32
AUDIT_ROLE_LENGTH = 64
AUDIT_ACTION_LENGTH = 128
# Who to call about an entry: a team, an address or a pager alias, one line.
OWNER_LENGTH = 256
# What an agent reports as its version (trustmesh's package version).
AGENT_VERSION_LENGTH = 64


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in as an aware datetime and comes out as an aware UTC datetime.

    Naive datetimes are refused on the way in: their zone is a guess, and a guessed expiry is a
    security bug. SQLite stores the UTC wall time (so string order is time order for range queries)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidArgument(
                f"timestamp {value.isoformat()} has no time zone; pass an aware UTC datetime, e.g. datetime.now(UTC)"
            )
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# An autoincrementing 64-bit key; SQLite only autoincrements a column declared exactly INTEGER.
_BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UtcDateTime()}


class AuthorityRow(Base):
    """An X.509 CA or a JWT signing key of the trust domain, with its lifecycle timestamps."""

    __tablename__ = "authorities"
    __table_args__ = (
        CheckConstraint("kind IN ('x509', 'jwt')", name="kind"),
        CheckConstraint("state IN ('prepared', 'active', 'retired', 'tainted', 'revoked')", name="state"),
        CheckConstraint("kind = 'jwt' OR certificate_der IS NOT NULL", name="x509_has_certificate"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    trust_domain: Mapped[str] = mapped_column(String(TRUST_DOMAIN_LENGTH))
    state: Mapped[str] = mapped_column(String(16))
    key_type: Mapped[str] = mapped_column(String(16))
    key_ref: Mapped[str] = mapped_column(String(512))
    public_key_der: Mapped[bytes] = mapped_column(LargeBinary)
    certificate_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    upstream_chain_pem: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    created_at: Mapped[datetime]
    activated_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]
    tainted_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class IssuedCertificateRow(Base):
    """One X509-SVID the CA signed: what leaf revocation, CRLs and the inventory are built from."""

    __tablename__ = "issued_certificates"
    __table_args__ = (Index(None, "authority_id", "revoked_at"),)

    # Lowercase hex without leading zeros: serials are up to 159 bits, past every SQL integer type.
    serial: Mapped[str] = mapped_column(String(40), primary_key=True)
    spiffe_id: Mapped[str] = mapped_column(String(SPIFFE_ID_LENGTH), index=True)
    # Removing an authority (after everything it signed expired) prunes its issuance records with it.
    authority_id: Mapped[str] = mapped_column(String(128), ForeignKey("authorities.id", ondelete="CASCADE"))
    not_before: Mapped[datetime]
    not_after: Mapped[datetime] = mapped_column(index=True)  # the inventory lists SVIDs by expiry
    issued_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    # The agent the SVID was issued through (its own SVID included); NULL when an officer minted it.
    agent_id: Mapped[str | None] = mapped_column(String(SPIFFE_ID_LENGTH), index=True)


class RegistrationEntryRow(Base):
    """A registration entry. Selectors are a JSON list (they are matched in Python); the agent's sync
    looks entries up by ``parent_id``, which is indexed."""

    __tablename__ = "registration_entries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    spiffe_id: Mapped[str] = mapped_column(String(SPIFFE_ID_LENGTH), index=True)
    parent_id: Mapped[str] = mapped_column(String(SPIFFE_ID_LENGTH), index=True)
    selectors: Mapped[list[list[str]]] = mapped_column(JSON)
    # SHA-256 of the canonical (spiffe_id, parent_id, selector set): one unique column, because the
    # three values together can exceed PostgreSQL's limit on the size of an index entry.
    identity_key: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), unique=True)
    dns_names: Mapped[list[str]] = mapped_column(JSON)
    x509_ttl_seconds: Mapped[int | None]
    jwt_ttl_seconds: Mapped[int | None]
    federates_with: Mapped[list[str]] = mapped_column(JSON)
    admin: Mapped[bool] = mapped_column(Boolean)
    hint: Mapped[str] = mapped_column(String(1024))
    owner: Mapped[str] = mapped_column(String(OWNER_LENGTH), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    revision: Mapped[int]


class JoinTokenRow(Base):
    """A one-time join token, known only by the SHA-256 of its text (a database leak reveals no token)."""

    __tablename__ = "join_tokens"

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    agent_spiffe_id: Mapped[str | None] = mapped_column(String(SPIFFE_ID_LENGTH))


class AgentRow(Base):
    """An attested node agent and the serial of the SVID it currently holds (and, briefly, the one
    it held before its last renewal)."""

    __tablename__ = "agents"

    spiffe_id: Mapped[str] = mapped_column(String(SPIFFE_ID_LENGTH), primary_key=True)
    attestation_type: Mapped[str] = mapped_column(String(64))
    serial: Mapped[str] = mapped_column(String(40))
    expires_at: Mapped[datetime]
    banned: Mapped[bool] = mapped_column(Boolean)
    # The SVID a renewal replaced, which still authenticates until previous_serial_until (calls in
    # flight on the agent's old channel finish); NULL after an attestation.
    previous_serial: Mapped[str | None] = mapped_column(String(40))
    previous_serial_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # The agent's last node API call (recorded at most once a minute) and the version it reported.
    last_seen_at: Mapped[datetime | None]
    version: Mapped[str] = mapped_column(String(AGENT_VERSION_LENGTH), default="")


class AuditRow(Base):
    """One audited mutation, chained to the row before it by ``prev_hash``. The unique ``prev_hash``
    makes a fork (two rows claiming the same predecessor) impossible even under concurrent appends, and
    lets ``audit verify`` find the rightful successor of a row at once (to tell reordering from deletion)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)  # `audit list --since` reads a time range
    actor: Mapped[str] = mapped_column(String(SPIFFE_ID_LENGTH))
    auth_method: Mapped[str] = mapped_column(String(AUDIT_METHOD_LENGTH), default="")
    role: Mapped[str] = mapped_column(String(AUDIT_ROLE_LENGTH), default="")
    action: Mapped[str] = mapped_column(String(AUDIT_ACTION_LENGTH))
    target: Mapped[str] = mapped_column(String(SPIFFE_ID_LENGTH))
    outcome: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(AUDIT_REASON_LENGTH), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), unique=True)
    hash: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH))


class AuditCheckpointRow(Base):
    """The audit chain's head (``last_id``, ``last_hash``) at ``at``, signed by the X.509 authority
    ``authority_id`` whose certificate is kept beside it, so cutting records off the end of the log is
    detectable (:mod:`ca.audit_checkpoints`)."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    last_id: Mapped[int] = mapped_column(BigInteger, index=True)
    last_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH))
    authority_id: Mapped[str] = mapped_column(String(128))
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class TrustBundleStateRow(Base):
    """The last ``spiffe_sequence`` published per trust domain, shared by every CA replica."""

    __tablename__ = "trust_bundle_state"

    trust_domain: Mapped[str] = mapped_column(String(TRUST_DOMAIN_LENGTH), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger)


class FederationRelationshipRow(Base):
    """A federated trust domain: where its bundle is fetched, how the endpoint is authenticated, the
    last good bundle (the bootstrap bundle until the first fetch) and how fetching goes."""

    __tablename__ = "federation_relationships"

    trust_domain: Mapped[str] = mapped_column(String(TRUST_DOMAIN_LENGTH), primary_key=True)
    bundle_endpoint_url: Mapped[str] = mapped_column(String(2048))
    profile: Mapped[str] = mapped_column(String(16))
    endpoint_spiffe_id: Mapped[str | None] = mapped_column(String(SPIFFE_ID_LENGTH))
    bundle: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    last_attempt_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    next_refresh_at: Mapped[datetime | None]
    last_error: Mapped[str] = mapped_column(String(AUDIT_REASON_LENGTH), default="")


class IdentityMappingRow(Base):
    """A legacy identity mapping rule (bridge/mapping.py), kept as the rule's dict form."""

    __tablename__ = "identity_mappings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SharedSecretRow(Base):
    """A random secret every CA replica shares, by name (the x509pop challenge key): created once, by
    whichever replica needs it first (insert-if-absent), and never changed."""

    __tablename__ = "shared_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class UsedX509PopNonceRow(Base):
    """An x509pop nonce whose proof succeeded, or an agentless exchange statement that was accepted,
    known by its SHA-256 (hex), kept until it would be refused as expired anyway: the primary key makes
    it single-use across replicas."""

    __tablename__ = "x509pop_used_nonces"

    digest: Mapped[str] = mapped_column(String(SHA256_HEX_LENGTH), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
