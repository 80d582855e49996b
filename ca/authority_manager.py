"""Loads, creates and publishes the trust domain's authorities (DESIGN §3).

The datastore is the source of truth and the key manager holds the private keys; this module joins
the two into the immutable :class:`~ca.authority.AuthoritySet` that issuers read. Start-up is safe
with several CA replicas on one PostgreSQL database: bootstrapping happens in one transaction that
first takes the trust domain's bundle-sequence row (a row lock), so exactly one replica creates the
first authorities and the others load them.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from ca.authority import (
    AuthoritySet,
    AuthorityState,
    JwtKey,
    X509Authority,
    authority_id_for,
    build_bundle,
)
from ca.keys.base import KeyManager
from ca.store.engine import Database
from ca.store.records import AuthorityKind, AuthorityRecord
from ca.store.repositories import AuthorityRepository, TrustBundleStateRepository
from ca.upstream.base import CaSubject, UpstreamAuthority
from spiffe_core.clock import Clock
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import load_pem_certificates

# CA certificates are backdated a little more than SVIDs, so SVIDs backdated by the issuer still nest.
CA_BACKDATE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class AuthorityParams:
    trust_domain: TrustDomain
    x509_key_type: KeyType
    jwt_key_type: KeyType
    ca_ttl: timedelta
    refresh_hint: timedelta
    subject: CaSubject = field(default_factory=CaSubject)


class AuthorityManager:
    def __init__(
        self,
        database: Database,
        keys: KeyManager,
        upstream: UpstreamAuthority,
        params: AuthorityParams,
        clock: Clock,
    ) -> None:
        self._database = database
        self._keys = keys
        self._upstream = upstream
        self._params = params
        self._clock = clock
        self._current: AuthoritySet | None = None

    def get_current(self) -> AuthoritySet:
        """The authorities as last loaded; cheap, lock-free."""
        if self._current is None:
            raise RuntimeError("AuthorityManager.load() must run before the CA serves")
        return self._current

    def load(self) -> AuthoritySet:
        """Read every authority of the trust domain, creating and activating the first X.509 CA and
        JWT key when none is active (first start). Returns and publishes the new snapshot.

        The bundle sequence grows on every load (a restart is a possible change as far as relying
        parties can tell; SPIFFE only asks that it never goes back)."""
        with self._database.transaction() as session:
            sequence = TrustBundleStateRepository(session).next_bundle_sequence(self._params.trust_domain)
            repo = AuthorityRepository(session)
            records = [r for r in repo.list() if r.trust_domain == self._params.trust_domain]
            if not any(r.kind is AuthorityKind.X509 and r.state is AuthorityState.ACTIVE for r in records):
                records.append(self._create_x509(session, AuthorityState.ACTIVE))
            if not any(r.kind is AuthorityKind.JWT and r.state is AuthorityState.ACTIVE for r in records):
                records.append(self._create_jwt(session, AuthorityState.ACTIVE))
        self._current = self._snapshot(records, sequence)
        return self._current

    def _snapshot(self, records: list[AuthorityRecord], sequence: int) -> AuthoritySet:
        x509_authorities: list[X509Authority] = []
        jwt_keys: list[JwtKey] = []
        for record in sorted(records, key=lambda r: r.not_before):
            if record.state is AuthorityState.REVOKED:
                continue
            key = self._keys.get(record.key_ref)
            if record.kind is AuthorityKind.X509:
                assert record.certificate_der is not None
                chain = load_pem_certificates(record.upstream_chain_pem.encode()) if record.upstream_chain_pem else ()
                cert = x509.load_der_x509_certificate(record.certificate_der)
                x509_authorities.append(X509Authority(record.id, cert, key, record.state, chain))
            else:
                jwt_keys.append(JwtKey(record.id, key, record.state, record.not_after))
        td = self._params.trust_domain
        bundle = build_bundle(
            td,
            tuple(x509_authorities),
            tuple(jwt_keys),
            sequence=sequence,
            refresh_hint=int(self._params.refresh_hint.total_seconds()),
        )
        return AuthoritySet(td, tuple(x509_authorities), tuple(jwt_keys), bundle)

    def _create_x509(self, session: Session, state: AuthorityState) -> AuthorityRecord:
        now = self._clock.now()
        key_ref = f"x509-{uuid.uuid4().hex}"
        key = self._keys.generate(key_ref, self._params.x509_key_type)
        try:
            authority_id = authority_id_for(key.public_key())
            cert, chain = self._upstream.mint_x509_ca(
                private_key=key,
                trust_domain=self._params.trust_domain,
                subject=self._params.subject.name_for(self._params.trust_domain, authority_id),
                not_before=now - CA_BACKDATE,
                not_after=now + self._params.ca_ttl,
            )
            record = AuthorityRecord(
                id=authority_id,
                kind=AuthorityKind.X509,
                trust_domain=self._params.trust_domain,
                state=state,
                key_type=self._params.x509_key_type,
                key_ref=key_ref,
                public_key_der=_public_der(key.public_key()),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                created_at=now,
                certificate_der=cert.public_bytes(serialization.Encoding.DER),
                upstream_chain_pem=(
                    b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain).decode() if chain else None
                ),
                activated_at=now if state is AuthorityState.ACTIVE else None,
            )
            AuthorityRepository(session).add(record)
        except BaseException:
            self._keys.delete(key_ref)  # no orphaned key when the record could not be written
            raise
        return record

    def _create_jwt(self, session: Session, state: AuthorityState) -> AuthorityRecord:
        now = self._clock.now()
        key_id = secrets.token_urlsafe(24)
        key_ref = f"jwt-{uuid.uuid4().hex}"
        key = self._keys.generate(key_ref, self._params.jwt_key_type)
        try:
            record = AuthorityRecord(
                id=key_id,
                kind=AuthorityKind.JWT,
                trust_domain=self._params.trust_domain,
                state=state,
                key_type=self._params.jwt_key_type,
                key_ref=key_ref,
                public_key_der=_public_der(key.public_key()),
                not_before=now,
                not_after=now + self._params.ca_ttl,
                created_at=now,
                activated_at=now if state is AuthorityState.ACTIVE else None,
            )
            AuthorityRepository(session).add(record)
        except BaseException:
            self._keys.delete(key_ref)
            raise
        return record


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
