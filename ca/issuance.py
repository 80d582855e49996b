"""X509-SVID and JWT-SVID issuance: authorized requests in, signed SVIDs that follow the SPIFFE rules out.

The SPIFFE ID, DNS names, subject CN and TTL come from the *authorized request* (a registration entry, an admin
call), never from the CSR: the CSR only proves possession of the key it carries. Every certificate is
built from the X509-SVID template, signed by the active authority, and validated against the
X509-SVID rules before it leaves this module (as SPIRE does), so a template bug cannot ship a bad SVID.
The rules are checked on the very extension objects the certificate is built from, before it is signed
(:class:`~spiffe_core.x509_svid.X509SvidTemplate`), which is as strict as parsing the signed leaf
again and spares a parse per certificate on the hot path.

Batch signing takes N requests in one call: all are checked before any is signed, so one bad CSR in a
batch fails the batch with an error naming it and nothing is recorded (:func:`sign_x509_svids`), or
only that request gets the error (:func:`sign_x509_svids_each`, the node API's per-item contract).
Either way the certificates are signed together (:func:`ca.signing.sign_all`): a batch signed by a
Vault-held authority costs one Vault request, not one per SVID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from ca.authority import AuthoritySet, X509Authority
from ca.signing import sign_all
from spiffe_core.errors import InvalidArgument
from spiffe_core.jwt_svid import check_audience, mint_jwt_svid
from spiffe_core.keys import PublicKey, key_type_of
from spiffe_core.spiffe_id import SpiffeId
from spiffe_core.x509_svid import new_serial, x509_svid_template

# Clock skew between the CA and relying parties: new SVIDs are valid from slightly in the past.
BACKDATE = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class TtlPolicy:
    default: timedelta
    maximum: timedelta

    def resolve(self, requested: timedelta | None, what: str) -> timedelta:
        """The TTL to use; a request above the maximum is refused, not silently shortened, so the
        caller learns its configuration is off."""
        if requested is None:
            return self.default
        if requested <= timedelta(0):
            raise InvalidArgument(f"{what} TTL must be positive, got {int(requested.total_seconds())}s")
        if requested > self.maximum:
            raise InvalidArgument(
                f"{what} TTL {int(requested.total_seconds())}s is over the maximum of "
                f"{int(self.maximum.total_seconds())}s; ask for less or raise the configured max_ttl"
            )
        return requested


@dataclass(frozen=True, slots=True)
class X509SvidRequest:
    """One authorized X509-SVID request: the CSR (DER or PEM) and what the caller is entitled to.
    ``subject_cn`` None: the subject's CN is the first DNS name, if any (the template's default); the
    agentless exchange sets the CN its mapping rule keeps."""

    csr: bytes
    spiffe_id: SpiffeId
    dns_names: tuple[str, ...] = ()
    ttl: timedelta | None = None
    subject_cn: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedX509Svid:
    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]  # leaf, then intermediates (never the root)
    authority_id: str
    serial: int

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc


def load_csr_public_key(csr_bytes: bytes, index: int | None = None) -> PublicKey:
    """Parse a CSR (PEM or DER), check its self-signature, and return the public key it proves.

    Only the key is taken from a CSR; its subject and extensions are ignored by design."""
    where = "CSR" if index is None else f"CSR #{index}"
    try:
        if csr_bytes.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(csr_bytes)
        else:
            csr = x509.load_der_x509_csr(csr_bytes)
    except ValueError as err:
        raise InvalidArgument(f"{where} is not a PKCS#10 certificate request (PEM or DER): {err}") from err
    try:
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as err:
        raise InvalidArgument(f"{where} has an unsupported key or signature: {err}") from err
    if not valid:
        raise InvalidArgument(f"{where} has an invalid signature; it must be signed by the key it carries")
    key_type_of(public_key)  # type: ignore[arg-type]  # refuses curves and sizes we do not sign for
    return public_key  # type: ignore[return-value]


def sign_x509_svids(
    requests: Sequence[X509SvidRequest], authorities: AuthoritySet, ttl_policy: TtlPolicy, now: datetime
) -> list[IssuedX509Svid]:
    """Sign a batch of X509-SVIDs with the active authority. Raises InvalidArgument (naming the
    request) before signing anything if any request is bad, NoActiveAuthority if none can sign."""
    authority = authorities.active_x509(now)
    checked = [
        _checked(request, None if len(requests) == 1 else index, authorities, ttl_policy)
        for index, request in enumerate(requests)
    ]
    leaves = [_leaf(authority, request, key, ttl, now) for request, key, ttl in checked]
    return _signed(authority, leaves)


def sign_x509_svids_each(
    requests: Sequence[X509SvidRequest], authorities: AuthoritySet, ttl_policy: TtlPolicy, now: datetime
) -> list[IssuedX509Svid | InvalidArgument]:
    """Sign each request on its own terms: one the CA refuses gets its InvalidArgument in its place
    (as :func:`sign_x509_svids` would raise it for that request alone), the others are signed together.
    Raises NoActiveAuthority if no authority can sign, and what the authority's key raises (a Vault
    outage) for the batch as a whole."""
    authority = authorities.active_x509(now)
    outcomes: list[_Leaf | InvalidArgument] = []
    for request in requests:
        try:
            outcomes.append(_leaf(authority, *_checked(request, None, authorities, ttl_policy), now))
        except InvalidArgument as err:
            outcomes.append(err)
    signed = iter(_signed(authority, [outcome for outcome in outcomes if isinstance(outcome, _Leaf)]))
    return [next(signed) if isinstance(outcome, _Leaf) else outcome for outcome in outcomes]


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A leaf template that passed the X509-SVID rules, ready to be signed."""

    spiffe_id: SpiffeId
    builder: x509.CertificateBuilder
    serial: int


def _checked(
    request: X509SvidRequest, index: int | None, authorities: AuthoritySet, ttl_policy: TtlPolicy
) -> tuple[X509SvidRequest, PublicKey, timedelta]:
    """The request, the key its CSR proves and its TTL; InvalidArgument for a request the CA refuses."""
    if not request.spiffe_id.is_member_of(authorities.trust_domain):
        raise InvalidArgument(
            f"SPIFFE ID {request.spiffe_id} is not in trust domain {authorities.trust_domain}; "
            "this CA signs only its own trust domain"
        )
    ttl = ttl_policy.resolve(request.ttl, "X509-SVID")
    return request, load_csr_public_key(request.csr, index), ttl


def _leaf(
    authority: X509Authority, request: X509SvidRequest, public_key: PublicKey, ttl: timedelta, now: datetime
) -> _Leaf:
    serial = new_serial()
    template = x509_svid_template(
        spiffe_id=request.spiffe_id,
        public_key=public_key,
        issuer=authority.certificate,
        not_before=now - BACKDATE,
        not_after=now + ttl,
        serial=serial,
        dns_names=request.dns_names,
        subject_cn=request.subject_cn,
    )
    template.validate()  # the X509-SVID rules, on the objects the leaf is built from, before signing
    return _Leaf(request.spiffe_id, template.builder, serial)


def _signed(authority: X509Authority, leaves: Sequence[_Leaf]) -> list[IssuedX509Svid]:
    """All leaves signed by the authority's key at once: one Vault request for a key held in Vault."""
    certificates = sign_all([leaf.builder for leaf in leaves], authority.private_key)
    return [
        IssuedX509Svid(leaf.spiffe_id, (certificate, *authority.intermediates), authority.id, leaf.serial)
        for leaf, certificate in zip(leaves, certificates, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class JwtSvidRequest:
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    ttl: timedelta | None = None


def mint_jwt(
    request: JwtSvidRequest, authorities: AuthoritySet, ttl_policy: TtlPolicy, now: datetime
) -> tuple[str, datetime]:
    """Mint a JWT-SVID with the active JWT key; ``exp`` is capped by the key's own expiry.
    Returns the compact token and its expiry. Raises InvalidArgument for an audience
    :func:`~spiffe_core.jwt_svid.check_audience` refuses, before any key is used."""
    if not request.spiffe_id.is_member_of(authorities.trust_domain):
        raise InvalidArgument(
            f"SPIFFE ID {request.spiffe_id} is not in trust domain {authorities.trust_domain}; "
            "this CA signs only its own trust domain"
        )
    check_audience(request.audience)
    key = authorities.active_jwt(now)
    ttl = ttl_policy.resolve(request.ttl, "JWT-SVID")
    expires_at = min(now + ttl, key.not_after)
    token = mint_jwt_svid(
        spiffe_id=request.spiffe_id,
        audience=request.audience,
        private_key=key.private_key,
        key_id=key.key_id,
        expires_at=expires_at,
        issued_at=now,
    )
    return token, expires_at
