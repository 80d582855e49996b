"""Builders of datastore records with plausible defaults, so a test spells out only what it is about."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ca.authority import AuthorityState
from ca.store import Actor, AuthorityKind, AuthorityRecord, EntrySpec
from spiffe_core.keys import KeyType
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

NOW = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)
TRUST_DOMAIN = TrustDomain("example.org")
# Who the audit log names for changes the tests make directly through the domain services.
TESTER = Actor("tester", "test")
# An officer's authority operations, as an authenticated admin caller would make them.
OFFICER = Actor("spiffe://example.org/admin/officer", "mtls", "security-officer")
AGENT_ID = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")


def authority(
    authority_id: str = "a1",
    state: AuthorityState = AuthorityState.PREPARED,
    kind: AuthorityKind = AuthorityKind.X509,
    created_at: datetime = NOW,
) -> AuthorityRecord:
    return AuthorityRecord(
        id=authority_id,
        kind=kind,
        trust_domain=TRUST_DOMAIN,
        state=state,
        key_type=KeyType.EC_P256,
        key_ref=f"disk:{authority_id}",
        public_key_der=b"\x30\x59public-key-" + authority_id.encode(),
        not_before=created_at,
        not_after=created_at + timedelta(days=7),
        created_at=created_at,
        certificate_der=b"\x30\x82certificate-" + authority_id.encode() if kind is AuthorityKind.X509 else None,
    )


def entry_spec(
    path: str = "/web", selectors: tuple[str, ...] = ("unix:uid:1000",), parent_id: SpiffeId = AGENT_ID
) -> EntrySpec:
    return EntrySpec(
        spiffe_id=SpiffeId.parse(f"spiffe://example.org{path}"),
        parent_id=parent_id,
        selectors=frozenset(Selector.parse(s) for s in selectors),
    )
