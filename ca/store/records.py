"""What the CA datastore hands out: plain frozen records, never ORM objects (STYLE "Persistence").

Records carry the domain's own types (``SpiffeId``, ``TrustDomain``, ``Selector``, ``KeyType``,
``AuthorityState``) so callers never parse strings they got from SQL. A record is a snapshot: changing
the database does not change a record already read.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple, TypeAlias

from cryptography import x509

from bridge.mapping import MappingRule
from ca.authority import AuthorityState
from spiffe_core.keys import KeyType
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

JsonValue: TypeAlias = str | int | float | bool | Sequence["JsonValue"] | Mapping[str, "JsonValue"] | None


class AuthorityKind(enum.StrEnum):
    X509 = "x509"
    JWT = "jwt"


@dataclass(frozen=True, slots=True)
class AuthorityRecord:
    """A stored authority. ``key_ref`` names the private key in the key manager; the key itself is
    never in the datastore. X.509 authorities carry their certificate and the upstream chain above it
    (PEM, nearest issuer first; None when self-signed)."""

    id: str
    kind: AuthorityKind
    trust_domain: TrustDomain
    state: AuthorityState
    key_type: KeyType
    key_ref: str
    public_key_der: bytes
    not_before: datetime
    not_after: datetime
    created_at: datetime
    certificate_der: bytes | None = None
    upstream_chain_pem: str | None = None
    activated_at: datetime | None = None
    retired_at: datetime | None = None
    tainted_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """An X509-SVID the CA signed, by serial number. ``agent_id`` is the agent it was issued through
    (a workload's agent, or the agent itself for its own SVID); None when an officer minted it."""

    serial: int
    spiffe_id: SpiffeId
    authority_id: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    revoked_at: datetime | None = None
    revocation_reason: x509.ReasonFlags | None = None
    agent_id: SpiffeId | None = None


@dataclass(frozen=True, slots=True)
class CertificateQuery:
    """Which issued X509-SVIDs to list: every given filter must match. ``expires_before`` and
    ``unexpired_at`` bound notAfter (exclusive and inclusive respectively: ``unexpired_at`` keeps what is
    still valid at that time); ``revoked`` True keeps only revoked ones, False only unrevoked ones."""

    spiffe_id: SpiffeId | None = None
    agent_id: SpiffeId | None = None
    authority_id: str | None = None
    expires_before: datetime | None = None
    unexpired_at: datetime | None = None
    revoked: bool | None = None


@dataclass(frozen=True, slots=True)
class EntrySpec:
    """The parts of a registration entry an operator chooses. TTLs of None mean "the CA's default"."""

    spiffe_id: SpiffeId
    parent_id: SpiffeId
    selectors: frozenset[Selector]
    dns_names: tuple[str, ...] = ()
    x509_ttl: timedelta | None = None
    jwt_ttl: timedelta | None = None
    federates_with: frozenset[TrustDomain] = frozenset()
    admin: bool = False
    hint: str = ""
    owner: str = ""  # who to call about this workload: a team, an address, a pager alias


@dataclass(frozen=True, slots=True)
class RegistrationEntry:
    """A stored registration entry; ``revision`` starts at 1 and grows by one on every update."""

    id: str
    spec: EntrySpec
    created_at: datetime
    updated_at: datetime
    revision: int


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A join token as stored: only the SHA-256 of its text, never the text."""

    token_hash: str = field(repr=False)
    expires_at: datetime
    created_at: datetime
    used_at: datetime | None = None
    agent_spiffe_id: SpiffeId | None = None

    @property
    def token_id(self) -> str:
        """What people call the token by: the first 16 hex digits of its SHA-256. It names the token
        without revealing it (the hash of a random token leads nowhere near its text)."""
        return self.token_hash[:TOKEN_ID_LENGTH]


# Hex digits of a join token's SHA-256 that name it in listings.
TOKEN_ID_LENGTH = 16


@dataclass(frozen=True, slots=True)
class JoinTokenQuery:
    """Which join tokens to list: ``unused_at`` keeps tokens unused and unexpired at that time;
    ``expires_before`` those expiring before it."""

    unused_at: datetime | None = None
    expires_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class Agent:
    """An attested node agent; ``serial`` is that of the agent SVID it currently holds."""

    spiffe_id: SpiffeId
    attestation_type: str
    serial: int
    expires_at: datetime
    banned: bool
    created_at: datetime
    updated_at: datetime
    # The SVID the last renewal replaced and until when it still authenticates (None after attestation).
    previous_serial: int | None = None
    previous_serial_until: datetime | None = None
    # The agent's last node API call (recorded at most once a minute; None before this was recorded)
    # and the version it reported ("" when it reported none).
    last_seen_at: datetime | None = None
    version: str = ""

    def accepts_serial(self, serial: int, now: datetime) -> bool:
        """True for the current SVID's serial, and for the previous one until its overlap ends."""
        if serial == self.serial:
            return True
        until = self.previous_serial_until
        return serial == self.previous_serial and until is not None and now < until


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted, as the audit log names them.

    ``name`` is the caller's identity as it was proven: a SPIFFE ID (mTLS with an admin SVID, or an agent
    on the node API), ``oidc:<issuer>#<subject>`` (a bearer JWT), ``unix:uid=<n>`` (the local admin socket,
    the break-glass path) or ``system:<task>`` (the CA itself, e.g. scheduled rotation). ``method`` says
    how it was proven and ``role`` under which role the action was allowed ("" where roles do not apply),
    so an auditor can tell a break-glass change from one an IdP vouched for."""

    name: str
    method: str
    role: str = ""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Something audited, about to be recorded: who did what to which target, how it ended and why.

    ``outcome`` is ``ok``, ``denied`` (refused by authentication, RBAC or policy) or ``failed``; ``reason``
    the one-line reason for anything but ``ok``."""

    at: datetime
    actor: Actor
    action: str
    target: str
    outcome: str
    detail: Mapping[str, JsonValue] = field(default_factory=dict, hash=False)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A recorded audit event with its place in the hash chain."""

    id: int
    event: AuditEvent
    prev_hash: str
    hash: str


class ChainCheck(NamedTuple):
    """Result of walking the audit chain.

    ``first_bad_id`` is the first record that does not follow from the one before it (None when the
    chain is intact) and ``problem`` says, in one line, what is wrong there: edited, deleted around,
    out of order. ``records`` counts the records checked; ``last_id`` and ``last_hash`` are the head of
    the intact chain (None for an empty log), which a checkpoint must match."""

    ok: bool
    first_bad_id: int | None
    problem: str = ""
    records: int = 0
    last_id: int | None = None
    last_hash: str | None = None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which audit records to list: every given filter must match. ``action`` matches as a prefix
    (``authority.`` finds every authority operation); the others exactly; times are inclusive."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    """The audit chain's head as signed at ``at`` by the X.509 authority ``authority_id``
    (:mod:`ca.audit_checkpoints` says what exactly is signed)."""

    id: int
    at: datetime
    last_id: int
    last_hash: str
    authority_id: str
    certificate_der: bytes = field(repr=False)
    signature: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class FederationRelationship:
    """A federated trust domain as stored. ``bundle`` is the partner's last good bundle as JSON (the
    bootstrap bundle until a fetch succeeds; None when neither exists yet); the times and
    ``last_error`` say how fetching it goes."""

    trust_domain: TrustDomain
    bundle_endpoint_url: str
    profile: str  # "https_web" or "https_spiffe"
    endpoint_spiffe_id: SpiffeId | None
    bundle: str | None
    created_at: datetime
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    next_refresh_at: datetime | None = None
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class StoredMapping:
    """A legacy identity mapping rule as the datastore holds it."""

    rule: MappingRule
    created_at: datetime
    updated_at: datetime
