"""Signing authorities of one trust domain, as an immutable snapshot the issuers read without locks.

DESIGN §3: X.509 CA keys and JWT signing keys each move prepared → active → retired → removed, and any
can be tainted or revoked. The :class:`AuthoritySet` is one consistent view of them; the manager swaps
in a new set on every change, so a signer that picked a set keeps a coherent CA + key pair.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from spiffe_core.bundle import Bundle, JwtAuthority
from spiffe_core.errors import NoActiveAuthority
from spiffe_core.keys import PrivateKey, PublicKey
from spiffe_core.spiffe_id import TrustDomain


class AuthorityState(enum.StrEnum):
    PREPARED = "prepared"
    ACTIVE = "active"
    RETIRED = "retired"
    TAINTED = "tainted"
    REVOKED = "revoked"

    @property
    def is_published(self) -> bool:
        """Whether relying parties should trust it: every state but revoked stays in the bundle, so
        SVIDs signed by a retired or tainted authority keep verifying until they are replaced."""
        return self is not AuthorityState.REVOKED


def authority_id_for(public_key: PublicKey) -> str:
    """The stable ID of an authority: the hex SHA-1 subject key identifier of its public key (as in
    SPIRE), so the ID can be read off any certificate the authority signs (its AKI)."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()


@dataclass(frozen=True, slots=True)
class X509Authority:
    """An X.509 signing CA: its certificate, the chain up to (not including) the upstream root, its key."""

    id: str
    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False, compare=False)
    state: AuthorityState
    upstream_chain: tuple[x509.Certificate, ...] = ()

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def root(self) -> x509.Certificate:
        """The trust anchor that goes into the bundle: the upstream root, or the CA itself when self-signed."""
        return self.upstream_chain[-1] if self.upstream_chain else self.certificate

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What follows the leaf in an SVID chain: this CA (unless it is the root) and upstream intermediates."""
        if not self.upstream_chain:
            return ()
        return (self.certificate, *self.upstream_chain[:-1])


@dataclass(frozen=True, slots=True)
class JwtKey:
    """A JWT-SVID signing key."""

    key_id: str
    private_key: PrivateKey = field(repr=False, compare=False)
    state: AuthorityState
    not_after: datetime
    not_before: datetime

    def public(self) -> JwtAuthority:
        return JwtAuthority(self.key_id, self.private_key.public_key())


@dataclass(frozen=True, slots=True)
class AuthoritySet:
    """Every authority of the trust domain at one moment, plus the bundle they publish."""

    trust_domain: TrustDomain
    x509: tuple[X509Authority, ...]
    jwt: tuple[JwtKey, ...]
    bundle: Bundle
    # DER CRLs, one per CA on every published chain (empty when that set cannot be complete: Envoy
    # refuses every peer once one CA of a chain has a CRL and another has none), and the serials of
    # revoked X509-SVIDs that have not expired yet.
    crls: tuple[bytes, ...] = ()
    revoked_serials: frozenset[int] = frozenset()

    def active_x509(self, at: datetime | None = None) -> X509Authority:
        """The X.509 authority that signs now. With ``at``, one that is not valid at that moment is
        refused as well: an SVID it signed would be born expired."""
        for authority in self.x509:
            if authority.state is AuthorityState.ACTIVE:
                _check_valid(f"X.509 authority {authority.id}", authority.not_before, authority.not_after, at)
                return authority
        raise NoActiveAuthority(f"trust domain {self.trust_domain} has no active X.509 authority")

    def active_jwt(self, at: datetime | None = None) -> JwtKey:
        for key in self.jwt:
            if key.state is AuthorityState.ACTIVE:
                _check_valid(f"JWT signing key {key.key_id}", key.not_before, key.not_after, at)
                return key
        raise NoActiveAuthority(f"trust domain {self.trust_domain} has no active JWT signing key")

    def tainted_ids(self) -> tuple[str, ...]:
        """IDs of tainted authorities: agents replace everything chained to them at once."""
        return tuple(a.id for a in self.x509 if a.state is AuthorityState.TAINTED) + tuple(
            k.key_id for k in self.jwt if k.state is AuthorityState.TAINTED
        )


def _check_valid(what: str, not_before: datetime, not_after: datetime, at: datetime | None) -> None:
    if at is None:
        return
    if at >= not_after:
        raise NoActiveAuthority(
            f"the active {what} expired at {not_after.isoformat()}; nothing can be signed until a new "
            "authority is active (the rotation task retries; see `trustmesh-ca authority list`)"
        )
    if at < not_before:
        raise NoActiveAuthority(f"the active {what} is not valid before {not_before.isoformat()}; check the clock")


def build_bundle(
    trust_domain: TrustDomain,
    x509_authorities: tuple[X509Authority, ...],
    jwt_keys: tuple[JwtKey, ...],
    *,
    sequence: int,
    refresh_hint: int,
) -> Bundle:
    """The bundle the authorities publish: every non-revoked root (deduplicated: several CAs under
    one upstream root publish it once) and every non-revoked JWT key."""
    roots: dict[bytes, x509.Certificate] = {}
    for authority in x509_authorities:
        if authority.state.is_published:
            roots.setdefault(authority.root.fingerprint(hashes.SHA256()), authority.root)
    return Bundle(
        trust_domain,
        tuple(roots.values()),
        tuple(key.public() for key in jwt_keys if key.state.is_published),
        sequence,
        refresh_hint,
    )
