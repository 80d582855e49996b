"""Loads, creates and publishes the trust domain's authorities (DESIGN §3).

The datastore is the source of truth and the key manager holds the private keys; this module joins
the two into the immutable :class:`~ca.authority.AuthoritySet` that issuers read, with the bundle, the
CRLs and the revoked serials it publishes. Start-up is safe with several CA replicas on one PostgreSQL
database: bootstrapping happens in one transaction that first takes the trust domain's bundle-sequence
row (a row lock), so exactly one replica creates the first authorities and the others load them. Every
later change of authorities (:mod:`ca.authority_ops`) takes the same row lock first.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy.orm import Session

from ca.authority import (
    AuthoritySet,
    AuthorityState,
    JwtKey,
    X509Authority,
    authority_id_for,
    build_bundle,
)
from ca.crl import RevokedSerial, build_crl, crl_number
from ca.keys.base import KeyManager
from ca.store.engine import Database
from ca.store.records import AuthorityKind, AuthorityRecord, IssuedCertificate
from ca.store.repositories import AuthorityRepository, IssuedCertificateRepository, TrustBundleStateRepository
from ca.upstream.base import CaSubject, UpstreamAuthority
from spiffe_core.clock import Clock
from spiffe_core.errors import FailedPrecondition, TrustmeshError, UpstreamUnavailable
from spiffe_core.keys import KeyType, PrivateKey
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import load_pem_certificates

log = logging.getLogger(__name__)

# CA certificates are backdated a little more than SVIDs, so SVIDs backdated by the issuer still nest.
CA_BACKDATE = timedelta(minutes=1)
# A key that no authority names is deleted at start-up once it is this old (never one being created).
ORPHAN_KEY_GRACE = timedelta(minutes=10)
# CRLs are valid from slightly in the past, for relying parties whose clocks run behind.
CRL_BACKDATE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class AuthorityParams:
    trust_domain: TrustDomain
    x509_key_type: KeyType
    jwt_key_type: KeyType
    ca_ttl: timedelta
    refresh_hint: timedelta
    subject: CaSubject = field(default_factory=CaSubject)
    # How long each CRL is valid; they are re-signed at half of it, and at once on every revocation.
    crl_ttl: timedelta = timedelta(hours=24)
    # Create first authorities even though the key manager holds keys (``run --new-trust-domain-root``).
    new_root: bool = False


@dataclass(frozen=True, slots=True)
class _SignedCrl:
    """A signed CRL, what it was signed for (issuer and list), and when to sign it afresh."""

    key: tuple[object, ...]
    der: bytes
    refresh_at: datetime


@dataclass(frozen=True, slots=True)
class Published:
    """A snapshot and when its CRLs must be re-signed."""

    authorities: AuthoritySet
    crls_refresh_at: datetime


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
        self._current: Published | None = None
        self._key_cache: dict[str, PrivateKey] = {}
        self._listeners: list[Callable[[AuthoritySet], None]] = []
        self._lock = threading.Lock()
        self._crl_warning: str | None = None
        self._crl_cache: dict[tuple[object, ...], _SignedCrl] = {}
        self._refresh_failed = False

    @property
    def params(self) -> AuthorityParams:
        return self._params

    def get_current(self) -> AuthoritySet:
        """The authorities as last loaded; cheap, lock-free."""
        if self._current is None:
            raise RuntimeError("AuthorityManager.load() must run before the CA serves")
        return self._current.authorities

    @property
    def crls_refresh_at(self) -> datetime | None:
        """When the rotation task must call :meth:`refresh`: when the CRLs are due, or at once while
        the last refresh failed (the datastore or an upstream such as Vault was down after a change
        was committed, so the published snapshot lacks it)."""
        if self._current is None:
            return None
        return self._clock.now() if self._refresh_failed else self._current.crls_refresh_at

    def add_listener(self, listener: Callable[[AuthoritySet], None]) -> None:
        """Call ``listener`` with every new snapshot (from whichever thread swapped it in)."""
        self._listeners.append(listener)

    def load(self) -> AuthoritySet:
        """Read every authority of the trust domain, creating and activating the first X.509 CA and
        JWT key when none is active (first start). Returns and publishes the new snapshot.

        The bundle sequence grows on every load (a restart is a possible change as far as relying
        parties can tell; SPIFFE only asks that it never goes back)."""
        with self._database.transaction() as session:
            sequence = TrustBundleStateRepository(session).next_bundle_sequence(self._params.trust_domain)
            records = self.records(session)
            if not records and not self._params.new_root:
                self._refuse_new_root_beside_keys()
            if not any(r.kind is AuthorityKind.X509 and r.state is AuthorityState.ACTIVE for r in records):
                records.append(self.create_x509(session, AuthorityState.ACTIVE))
            if not any(r.kind is AuthorityKind.JWT and r.state is AuthorityState.ACTIVE for r in records):
                records.append(self.create_jwt(session, AuthorityState.ACTIVE))
            revoked = IssuedCertificateRepository(session).revoked_live(self._clock.now())
        self._sweep_orphaned_keys({r.key_ref for r in records})
        return self._publish(records, sequence, revoked)

    def _refuse_new_root_beside_keys(self) -> None:
        """An empty datastore beside authority keys is a lost or replaced datastore, not a first start:
        new authorities would be a new root that no agent trusts, and the old keys would be swept."""
        keys = sorted(key_ref for key_ref, _ in self._keys.list() if key_ref.startswith(("x509-", "jwt-")))
        if keys:
            shown = ", ".join(keys[:3]) + (", …" if len(keys) > 3 else "")
            raise FailedPrecondition(
                f"the datastore holds no authorities of {self._params.trust_domain}, but the key manager holds "
                f"{len(keys)} authority keys ({shown}): the datastore was lost or replaced. Restore it from a "
                "backup; or, to start a new trust domain root on purpose (every agent and workload must then "
                "get the new bundle, and those keys are deleted), run 'trustmesh-ca run --new-trust-domain-root' "
                "once or move the keys directory away"
            )

    def _sweep_orphaned_keys(self, referenced: set[str]) -> None:
        """Delete authority keys no stored authority names: left by a CA killed between writing a key and
        committing its authority, or between pruning an authority and deleting its key. Only keys older
        than :data:`ORPHAN_KEY_GRACE`, so a key another replica is about to commit is never touched."""
        cutoff = self._clock.now() - ORPHAN_KEY_GRACE
        for key_ref, created in self._keys.list():
            if key_ref.startswith(("x509-", "jwt-")) and key_ref not in referenced and created < cutoff:
                log.warning("deleting key %s: no authority uses it (a change was interrupted)", key_ref)
                self._keys.delete(key_ref)

    def refresh(self) -> AuthoritySet:
        """Re-read the authorities and revocations (after a change, here or on another replica) and
        re-sign the CRLs; publishes the new snapshot. Does not change the bundle sequence. Until one
        succeeds after a failure, :attr:`crls_refresh_at` asks the rotation task to retry."""
        self._refresh_failed = True
        with self._database.transaction() as session:
            sequence = TrustBundleStateRepository(session).current_bundle_sequence(self._params.trust_domain)
            records = self.records(session)
            revoked = IssuedCertificateRepository(session).revoked_live(self._clock.now())
        published = self._publish(records, sequence, revoked)
        self._refresh_failed = False
        return published

    def records(self, session: Session) -> list[AuthorityRecord]:
        """Every stored authority of this trust domain, oldest first."""
        return [r for r in AuthorityRepository(session).list() if r.trust_domain == self._params.trust_domain]

    def _publish(
        self, records: Sequence[AuthorityRecord], sequence: int, revoked: Sequence[IssuedCertificate]
    ) -> AuthoritySet:
        published = self._snapshot(records, sequence, revoked)
        with self._lock:
            # Snapshots may be built by several threads; never replace a newer bundle by an older one.
            current = self._current
            if current is not None and current.authorities.bundle.sequence > sequence:
                return current.authorities
            self._current = published
        for listener in self._listeners:
            listener(published.authorities)
        return published.authorities

    def _key(self, key_ref: str) -> PrivateKey:
        key = self._key_cache.get(key_ref)
        if key is None:
            key = self._key_cache[key_ref] = self._keys.get(key_ref)
        return key

    def _snapshot(
        self, records: Sequence[AuthorityRecord], sequence: int, revoked: Sequence[IssuedCertificate]
    ) -> Published:
        x509_authorities: list[X509Authority] = []
        revoked_authorities: list[tuple[X509Authority, datetime]] = []
        jwt_keys: list[JwtKey] = []
        for record in sorted(records, key=lambda r: r.not_before):
            key = self._key(record.key_ref)
            if record.kind is AuthorityKind.X509:
                assert record.certificate_der is not None
                chain = load_pem_certificates(record.upstream_chain_pem.encode()) if record.upstream_chain_pem else ()
                cert = x509.load_der_x509_certificate(record.certificate_der)
                authority = X509Authority(record.id, cert, key, record.state, chain)
                if record.state is AuthorityState.REVOKED:
                    revoked_authorities.append((authority, record.revoked_at or record.created_at))
                else:
                    x509_authorities.append(authority)
            elif record.state is not AuthorityState.REVOKED:
                jwt_keys.append(JwtKey(record.id, key, record.state, record.not_after, record.not_before))
        td = self._params.trust_domain
        bundle = build_bundle(
            td,
            tuple(x509_authorities),
            tuple(jwt_keys),
            sequence=sequence,
            refresh_hint=int(self._params.refresh_hint.total_seconds()),
        )
        now = self._clock.now()
        live_revoked = tuple(c for c in revoked if c.not_after > now)
        crls, crls_refresh_at = self._crls(tuple(x509_authorities), tuple(revoked_authorities), live_revoked, now)
        authorities = AuthoritySet(
            td,
            tuple(x509_authorities),
            tuple(jwt_keys),
            bundle,
            crls=crls,
            revoked_serials=frozenset(c.serial for c in live_revoked),
        )
        return Published(authorities, crls_refresh_at)

    def _crls(
        self,
        published: tuple[X509Authority, ...],
        revoked_authorities: tuple[tuple[X509Authority, datetime], ...],
        revoked: Sequence[IssuedCertificate],
        now: datetime,
    ) -> tuple[tuple[bytes, ...], datetime]:
        """One CRL per CA on every published chain: each trustmesh authority's (its revoked leaves),
        and each upstream root's when the upstream holds its key (the revoked trustmesh authorities
        under it). If any CA of a published chain would be left without a CRL, none is published:
        Envoy's SPIFFE validator refuses every peer once a chain has one CA with a CRL and one without
        (docs/runbooks/revocation.md). Returns the CRLs and when the first of them is due for
        re-signing.

        A CRL is re-signed only when what it lists changed or half its life passed, so a change that
        revokes nothing (a prepare, an activation) leaves the CRL bytes, and thus every Envoy validation
        context, as they were: no push to every stream for nothing."""
        by_authority: dict[str, list[RevokedSerial]] = {}
        for cert in revoked:
            assert cert.revoked_at is not None
            by_authority.setdefault(cert.authority_id, []).append(
                RevokedSerial(cert.serial, cert.revoked_at, cert.revocation_reason)
            )
        signed: list[_SignedCrl] = []
        roots: dict[bytes, x509.Certificate] = {}
        this_update, next_update, number = now - CRL_BACKDATE, now + self._params.crl_ttl, crl_number(now)
        for authority in published:
            listed = tuple(sorted(by_authority.get(authority.id, ()), key=lambda r: r.serial))
            own = self._crl(
                ("authority", authority.id, listed),
                functools.partial(
                    build_crl,
                    issuer=authority.certificate,
                    issuer_key=authority.private_key,
                    revoked=listed,
                    this_update=this_update,
                    next_update=next_update,
                    number=number,
                ),
                now,
            )
            assert own is not None  # an authority always holds its own key
            signed.append(own)
            if len(authority.upstream_chain) > 1:
                return self._without_crls(
                    f"authority {authority.id} chains through an upstream intermediate whose issuer's key "
                    "trustmesh does not hold"
                ), now + self._params.crl_ttl / 2
            if authority.upstream_chain:
                roots.setdefault(authority.root.fingerprint(hashes.SHA256()), authority.root)
        for fingerprint, root in roots.items():
            under_root = tuple(
                RevokedSerial(a.certificate.serial_number, revoked_at, x509.ReasonFlags.ca_compromise)
                for a, revoked_at in revoked_authorities
                if a.upstream_chain and a.root == root
            )
            try:
                root_crl = self._crl(
                    ("root", fingerprint.hex(), under_root),
                    functools.partial(self._upstream.root_crl, root, under_root, this_update, next_update, number),
                    now,
                )
            except FailedPrecondition as err:  # the upstream holds the root's CRL but cannot give a usable one
                return self._without_crls(str(err)), now + self._params.crl_ttl / 2
            if root_crl is None:
                return self._without_crls(
                    f"no CRL can be signed for the upstream root {root.subject.rfc4514_string()}: it is no longer "
                    "the configured upstream (its key is not held), it is not the top of the upstream chain "
                    "(ca.upstream.bundle_file), or its keyUsage lacks cRLSign"
                ), now + self._params.crl_ttl / 2
            signed.append(root_crl)
        self._crl_warning = None
        self._crl_cache = {crl.key: crl for crl in signed}  # forget CRLs of pruned authorities
        refresh_at = min((crl.refresh_at for crl in signed), default=now + self._params.crl_ttl / 2)
        return tuple(crl.der for crl in signed), refresh_at

    def _crl(
        self, key: tuple[object, ...], sign: Callable[[], x509.CertificateRevocationList | None], now: datetime
    ) -> _SignedCrl | None:
        cached = self._crl_cache.get(key)
        if cached is not None and now < cached.refresh_at:
            return cached
        crl = sign()
        if crl is None:
            return None
        return _SignedCrl(key, crl.public_bytes(serialization.Encoding.DER), now + self._params.crl_ttl / 2)

    def _without_crls(self, why: str) -> tuple[bytes, ...]:
        message = (
            f"publishing no CRLs: {why}; relying parties (Envoy) cannot enforce leaf revocation until "
            "every authority on that chain is pruned (revoked SVIDs are still replaced by their agents)"
        )
        if message != self._crl_warning:
            log.warning("%s", message)
            self._crl_warning = message
        return ()

    @property
    def crl_warning(self) -> str | None:
        """Why no CRLs are published now, or None when they are."""
        return self._crl_warning

    def create_x509(
        self, session: Session, state: AuthorityState, *, must_outlive: datetime | None = None
    ) -> AuthorityRecord:
        """Generate a key, have the upstream certify it, and record the new authority in ``state``.
        Raises UpstreamUnavailable when the upstream cannot certify a CA that is valid now, or (for a
        successor) one that outlives ``must_outlive``: an upstream root about to expire caps every new
        CA at its own expiry, and successors that die with their predecessor are no rotation."""
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
            capped = cert.not_valid_after_utc < (now + self._params.ca_ttl).replace(microsecond=0)
            if cert.not_valid_after_utc <= now or (
                capped and must_outlive is not None and cert.not_valid_after_utc <= must_outlive
            ):
                raise UpstreamUnavailable(
                    f"the upstream authority caps new CAs at {cert.not_valid_after_utc.isoformat()}, so it cannot "
                    "certify one that is valid now and outlives the active one; replace ca.upstream.cert_file and "
                    "key_file with a root that is valid for longer (docs/runbooks/root-rotation.md)"
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
        self._key_cache[key_ref] = key
        return record

    def create_jwt(self, session: Session, state: AuthorityState) -> AuthorityRecord:
        now = self._clock.now()
        key_id = secrets.token_hex(20)  # like X.509 authority IDs: safe in URLs and on command lines
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
        self._key_cache[key_ref] = key
        return record

    def delete_key(self, key_ref: str) -> None:
        """Forget a pruned authority's key (after its record is gone)."""
        self._key_cache.pop(key_ref, None)
        try:
            self._keys.delete(key_ref)
        except (TrustmeshError, OSError) as err:
            log.warning("could not delete the key %s of a pruned authority: %s", key_ref, err)


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
