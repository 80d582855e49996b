"""Builders for ``trustmesh-ca analyze``'s tests: real CA certificates and CRLs around any moment, the
authority records that carry them, and a healthy state each check test breaks in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.analysis.findings import Context, PublishedCrls, State
from ca.authority import AuthorityState, authority_id_for
from ca.config import CaConfig
from ca.crl import build_crl
from ca.store.records import Agent, AuthorityKind, AuthorityRecord, EntrySpec, JoinToken, RegistrationEntry
from spiffe_core.keys import KeyType
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import signing_cert_builder
from tests.support.store import NOW

TRUST_DOMAIN = TrustDomain("example.org")
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class Ca:
    """A CA certificate with its key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def ca(name: str, not_before: datetime, not_after: datetime, issuer: Ca | None = None) -> Ca:
    """An EC P-256 CA certificate named ``name``, self-signed or signed by ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = signing_cert_builder(
        trust_domain=TRUST_DOMAIN,
        public_key=key.public_key(),
        subject=subject,
        issuer_name=None if issuer is None else issuer.certificate.subject,
        issuer_public_key=None if issuer is None else issuer.key.public_key(),
        not_before=not_before,
        not_after=not_after,
    )
    signer = key if issuer is None else issuer.key
    return Ca(builder.sign(signer, hashes.SHA256()), key)


def x509_record(
    authority: Ca,
    state: AuthorityState,
    *,
    created_at: datetime,
    upstream: Sequence[Ca] = (),
    activated_at: datetime | None = None,
) -> AuthorityRecord:
    """The datastore record of an X.509 authority whose certificate is ``authority`` (its chain above:
    ``upstream``, nearest issuer first)."""
    certificate = authority.certificate
    return AuthorityRecord(
        id=authority_id_for(certificate.public_key()),  # type: ignore[arg-type]
        kind=AuthorityKind.X509,
        trust_domain=TRUST_DOMAIN,
        state=state,
        key_type=KeyType.EC_P256,
        key_ref="memory:test",
        public_key_der=certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        created_at=created_at,
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        upstream_chain_pem="".join(c.pem for c in upstream) or None,
        activated_at=activated_at
        if activated_at is not None
        else (created_at if state is AuthorityState.ACTIVE else None),
    )


def jwt_record(key_id: str, state: AuthorityState, *, created_at: datetime, not_after: datetime) -> AuthorityRecord:
    return AuthorityRecord(
        id=key_id,
        kind=AuthorityKind.JWT,
        trust_domain=TRUST_DOMAIN,
        state=state,
        key_type=KeyType.EC_P256,
        key_ref="memory:jwt",
        public_key_der=b"\x30\x59jwt-" + key_id.encode(),
        not_before=created_at,
        not_after=not_after,
        created_at=created_at,
        activated_at=created_at if state is AuthorityState.ACTIVE else None,
    )


def crl_of(issuer: Ca, this_update: datetime, next_update: datetime) -> x509.CertificateRevocationList:
    return build_crl(
        issuer=issuer.certificate,
        issuer_key=issuer.key,
        revoked=(),
        this_update=this_update,
        next_update=next_update,
        number=1,
    )


def entry(
    path: str,
    parent: SpiffeId = AGENT,
    *,
    x509_ttl: timedelta | None = None,
    dns_names: tuple[str, ...] = (),
    entry_id: str = "e-1",
) -> RegistrationEntry:
    spec = EntrySpec(
        spiffe_id=SpiffeId.parse(f"spiffe://example.org{path}"),
        parent_id=parent,
        selectors=frozenset({Selector.parse("unix:uid:1000")}),
        dns_names=dns_names,
        x509_ttl=x509_ttl,
        owner="team@example.org",
    )
    return RegistrationEntry(entry_id, spec, NOW - DAY, NOW - DAY, 1)


def agent(spiffe_id: SpiffeId = AGENT, expires_at: datetime = NOW + HOUR, banned: bool = False) -> Agent:
    return Agent(spiffe_id, "join_token", 1, expires_at, banned, NOW - DAY, NOW, last_seen_at=NOW, version="0.4.0")


def token(expires_at: datetime, created_at: datetime = NOW, agent_id: SpiffeId | None = AGENT) -> JoinToken:
    return JoinToken("ab" * 32, expires_at, created_at, agent_spiffe_id=agent_id)


# One self-signed X.509 authority, a day into its 7-day life, with its fresh CRL.
AUTHORITY = ca("trustmesh CA example.org", NOW - DAY, NOW + 6 * DAY)


def healthy_state(now: datetime = NOW) -> State:
    """A CA a day into its first authority's life: both authorities active, one attested agent with one
    owned entry, a fresh CRL, nothing federated or mapped."""
    return State(
        authorities=(
            x509_record(AUTHORITY, AuthorityState.ACTIVE, created_at=now - DAY),
            jwt_record("jwt-1", AuthorityState.ACTIVE, created_at=now - DAY, not_after=now + 6 * DAY),
        ),
        agents=(agent(),),
        entries=(entry("/web"),),
        unused_tokens=(),
        issued_records=10,
        crls=PublishedCrls((crl_of(AUTHORITY, now - HOUR, now + 23 * HOUR),)),
    )


def healthy(state: State | None = None, config: CaConfig | None = None, now: datetime = NOW) -> Context:
    """The context of :func:`healthy_state` under the default configuration, or with what a test changes."""
    return Context(config or CaConfig(), now, healthy_state(now) if state is None else state)


def broken(**changes: object) -> Context:
    """:func:`healthy` with the state's fields in ``changes`` replaced."""
    return healthy(dataclasses.replace(healthy_state(), **changes))  # type: ignore[arg-type]
