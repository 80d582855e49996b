"""X509-SVIDs: the certificate templates and the validation rules of SPIFFE's X509-SVID.md.

Leaf rules (§4): exactly one URI SAN holding a SPIFFE ID with a path; ``cA`` false; keyUsage present
with digitalSignature and without keyCertSign or cRLSign; extendedKeyUsage, when present, holds both
serverAuth and clientAuth. RFC 8813 adds: no keyEncipherment with an EC key (and we refuse
keyAgreement with an RSA key, which cannot do it). Signing certificates (§4.1, §4.3): ``cA`` true and
keyCertSign set; a URI SAN, if any, is the trust domain's own ID (no path).

We *issue* stricter than we *accept*: our templates always mark keyUsage and basicConstraints
critical and always carry SKI/AKI and both EKUs, while validation accepts what the spec allows.

Chain validation picks the bundle of the leaf's own trust domain, never another, and runs RFC 5280
path validation (signatures, validity, CA constraints, path length, key usage) with cryptography's
verifier, with the leaf checked by the SPIFFE rules above instead of the Web PKI's server rules.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, PublicKeyAlgorithmOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from spiffe_core.errors import SpiffeIdError, X509SvidError
from spiffe_core.keys import PrivateKey, PublicKey
from spiffe_core.sources import BundleSource
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

_HOSTNAME = re.compile(
    r"^(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
)
_MAX_CHAIN_DEPTH = 8


def new_serial() -> int:
    """A random positive serial of up to 159 bits (RFC 5280 allows 20 octets): far above the 64 bits
    of entropy CA/B rules ask for, so serials are unguessable and never collide in practice."""
    return x509.random_serial_number()


def check_dns_name(name: str) -> str:
    """A DNS SAN must be a hostname (optionally ``*.``-prefixed); anything else is refused."""
    if len(name) > 253 or not _HOSTNAME.match(name):
        raise X509SvidError(
            f"DNS name {name!r} is not a valid hostname (letters, digits, '-' and '.'; '*.' prefix allowed)"
        )
    return name.lower()


def _key_usage(*, ec_key: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not ca and not ec_key,
        data_encipherment=False,
        key_agreement=not ca and ec_key,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


# Extensions that are the same in every leaf, built once: issuance is a hot path.
_LEAF_BASIC_CONSTRAINTS = x509.Extension(
    ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=False, path_length=None)
)
_LEAF_EKU = x509.Extension(
    ExtensionOID.EXTENDED_KEY_USAGE,
    False,
    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
)
_LEAF_KEY_USAGE = {
    is_ec: x509.Extension(ExtensionOID.KEY_USAGE, True, _key_usage(ec_key=is_ec, ca=False)) for is_ec in (True, False)
}
_SPIFFE_ORG = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")
_SVID_SUBJECT = x509.Name([_SPIFFE_ORG])


@dataclass(frozen=True, slots=True)
class _Issuer:
    """What every leaf of one signing certificate takes from it, read once: its subject, its notAfter
    and the AKI (its SKI)."""

    subject: x509.Name
    not_after: datetime
    aki: x509.Extension[x509.AuthorityKeyIdentifier]


@functools.lru_cache(maxsize=32)
def _issuer(issuer: x509.Certificate) -> _Issuer:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise X509SvidError(
            f"signing certificate {issuer.subject.rfc4514_string()!r} has no subject key identifier"
        ) from None
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return _Issuer(
        issuer.subject, issuer.not_valid_after_utc, x509.Extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, aki)
    )


def _subject(common_name: str) -> x509.Name:
    """``O=SPIFFE`` with this CN, or a clear refusal when X.520 does not allow it."""
    try:
        return x509.Name([_SPIFFE_ORG, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    except ValueError as err:  # a CN taken from another certificate may be longer than X.520 allows
        raise X509SvidError(f"subject CN {common_name!r} cannot be used: {err}") from err


@functools.lru_cache(maxsize=4096)
def _names(spiffe_id: SpiffeId, dns_names: tuple[str, ...]) -> tuple[x509.Name, x509.Extension[x509.ExtensionType]]:
    """The subject and SAN extension of a leaf for this identity: an agent's workloads get SVIDs for the
    same few identities again and again, so these are built (and the DNS names checked) once each."""
    if spiffe_id.is_trust_domain_id:
        raise X509SvidError(f"{spiffe_id} has no path; a workload's X509-SVID needs one (X509-SVID §2)")
    names = [check_dns_name(n) for n in dns_names]
    subject = _subject(names[0]) if names else _SVID_SUBJECT
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    sans += [x509.DNSName(n) for n in names]
    return subject, x509.Extension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False, x509.SubjectAlternativeName(sans))


@dataclass(frozen=True, slots=True)
class X509SvidTemplate:
    """A leaf ready to be signed, and the very extension objects it was built from, so the X509-SVID
    rules can be checked on them (:meth:`validate`) without signing first and parsing the result."""

    builder: x509.CertificateBuilder
    extensions: tuple[x509.Extension[x509.ExtensionType], ...]
    ec_key: bool

    def validate(self) -> SpiffeId:
        """The rules :func:`validate_x509_svid_leaf` applies to a certificate, applied to this template."""
        return check_leaf_extensions(self.extensions, ec_key=self.ec_key)


def x509_svid_template(
    *,
    spiffe_id: SpiffeId,
    public_key: PublicKey,
    issuer: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
    serial: int | None = None,
    dns_names: Sequence[str] = (),
    subject_cn: str | None = None,
) -> X509SvidTemplate:
    """The X509-SVID leaf template, ready to be signed by ``issuer``'s key.

    ``not_after`` is capped by the issuer's own notAfter (an SVID never outlives its signer). The
    subject is ``O=SPIFFE`` and, when there is one, a CN: ``subject_cn``, else the first DNS name (the
    spec leaves the subject free; old clients that still read the CN find a name they know)."""
    signer = _issuer(issuer)
    subject, san = _names(spiffe_id, tuple(dns_names))
    if subject_cn:
        subject = _subject(subject_cn)
    ec_key = isinstance(public_key, ec.EllipticCurvePublicKey)
    extensions = (
        _LEAF_BASIC_CONSTRAINTS,
        _LEAF_KEY_USAGE[ec_key],
        _LEAF_EKU,
        san,
        x509.Extension(
            ExtensionOID.SUBJECT_KEY_IDENTIFIER, False, x509.SubjectKeyIdentifier.from_public_key(public_key)
        ),
        signer.aki,
    )
    # The constructor with a ready extension list skips the per-call copies and checks of the fluent
    # builder API (a third of the template cost); the extensions are checked by validate() instead.
    builder = x509.CertificateBuilder(
        issuer_name=signer.subject,
        subject_name=subject,
        public_key=public_key,
        serial_number=serial if serial is not None else new_serial(),
        not_valid_before=_naive_utc(not_before),
        not_valid_after=_naive_utc(min(not_after, signer.not_after)),
        extensions=list(extensions),
    )
    return X509SvidTemplate(builder, extensions, ec_key)


def _naive_utc(moment: datetime) -> datetime:
    """cryptography's builder constructor takes naive UTC times (its fluent setters convert for you)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def signing_cert_builder(
    *,
    trust_domain: TrustDomain,
    public_key: PublicKey,
    subject: x509.Name,
    issuer_name: x509.Name | None,
    issuer_public_key: PublicKey | None,
    not_before: datetime,
    not_after: datetime,
    serial: int | None = None,
    path_length: int | None = None,
) -> x509.CertificateBuilder:
    """A CA (signing) certificate template; ``issuer_name=None`` makes it self-signed."""
    authority_key = public_key if issuer_public_key is None else issuer_public_key
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer_name is None else issuer_name)
        .public_key(public_key)
        .serial_number(serial if serial is not None else new_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(ec_key=isinstance(public_key, ec.EllipticCurvePublicKey), ca=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(trust_domain.id))]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key), critical=False)
    )


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.UniformResourceIdentifier)]


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        return cert.extensions
    except (ValueError, x509.DuplicateExtension) as err:
        raise X509SvidError(f"certificate {cert.serial_number:x} has a malformed extension: {err}") from err


# The extension types the leaf rules look at.
_RULED_TYPES = (x509.SubjectAlternativeName, x509.BasicConstraints, x509.KeyUsage, x509.ExtendedKeyUsage)


@functools.lru_cache(maxsize=4096)
def _uri_spiffe_id(uri: str) -> SpiffeId:
    """``SpiffeId.parse`` of a URI SAN, remembered: the same few identities are checked again and
    again (a refusal raises and is not remembered)."""
    return SpiffeId.parse(uri)


def validate_x509_svid_leaf(cert: x509.Certificate) -> SpiffeId:
    """Check a leaf against X509-SVID.md §2 and §4; return its SPIFFE ID or raise X509SvidError."""
    is_ec = cert.public_key_algorithm_oid == PublicKeyAlgorithmOID.EC_PUBLIC_KEY  # no key object needed
    return check_leaf_extensions(_extensions(cert), ec_key=is_ec)


def check_leaf_extensions(extensions: Iterable[x509.Extension[x509.ExtensionType]], *, ec_key: bool) -> SpiffeId:
    """The leaf rules of X509-SVID.md §2 and §4 (and RFC 8813's) over a leaf's extensions and the kind
    of its key: a parsed certificate's, or the objects a template is built from. Returns the SPIFFE ID
    of the URI SAN or raises X509SvidError. An extension present twice is refused, as parsing a
    certificate that has one twice fails."""
    uris: list[str] = []
    constraints: x509.BasicConstraints | None = None
    usage: x509.KeyUsage | None = None
    eku: x509.ExtendedKeyUsage | None = None
    seen: set[x509.ObjectIdentifier] = set()
    for extension in extensions:  # one pass: this runs on every certificate we issue
        if extension.oid in seen:
            raise X509SvidError(f"an X509-SVID has the extension {extension.oid.dotted_string} twice")
        seen.add(extension.oid)
        value = extension.value
        kind = type(value)  # compared by identity: isinstance on these ABCs costs more than the rest
        if kind not in _RULED_TYPES:  # a subclass still counts as what it extends
            kind = next((ruled for ruled in _RULED_TYPES if isinstance(value, ruled)), kind)
        if kind is x509.SubjectAlternativeName:
            uris = value.get_values_for_type(x509.UniformResourceIdentifier)  # type: ignore[attr-defined]
        elif kind is x509.BasicConstraints:
            constraints = value  # type: ignore[assignment]
        elif kind is x509.KeyUsage:
            usage = value  # type: ignore[assignment]
        elif kind is x509.ExtendedKeyUsage:
            eku = value  # type: ignore[assignment]
    if len(uris) != 1:
        raise X509SvidError(f"an X509-SVID must have exactly one URI SAN, this one has {len(uris)} (X509-SVID §2)")
    try:
        spiffe_id = _uri_spiffe_id(uris[0])
    except SpiffeIdError as err:
        raise X509SvidError(f"the URI SAN of the X509-SVID is not a SPIFFE ID: {err}") from err
    if spiffe_id.is_trust_domain_id:
        raise X509SvidError(f"leaf SPIFFE ID {spiffe_id} has no path; only signing certificates may (X509-SVID §2)")
    if constraints is not None and constraints.ca:
        raise X509SvidError(f"leaf {spiffe_id} has cA=true; a leaf X509-SVID must not be a CA (X509-SVID §4.1)")
    if usage is None:
        raise X509SvidError(f"leaf {spiffe_id} has no keyUsage extension; it must have one (X509-SVID §4.3)")
    if not usage.digital_signature:
        raise X509SvidError(f"leaf {spiffe_id} lacks keyUsage digitalSignature (X509-SVID §4.3)")
    if usage.key_cert_sign:
        raise X509SvidError(f"leaf {spiffe_id} has keyUsage keyCertSign; leaves must not (X509-SVID §4.3)")
    if usage.crl_sign:
        raise X509SvidError(f"leaf {spiffe_id} has keyUsage cRLSign; leaves must not (X509-SVID §4.3)")
    if ec_key and usage.key_encipherment:
        raise X509SvidError(f"leaf {spiffe_id} has an EC key with keyUsage keyEncipherment, which RFC 8813 forbids")
    if not ec_key and usage.key_agreement:
        raise X509SvidError(f"leaf {spiffe_id} has an RSA key with keyUsage keyAgreement, which RSA cannot do")
    if eku is None:
        return spiffe_id
    for needed, name in (
        (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
        (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
    ):
        if needed not in eku:
            raise X509SvidError(
                f"leaf {spiffe_id} has extendedKeyUsage without {name}; both are required (X509-SVID §4.4)"
            )
    return spiffe_id


def validate_signing_cert(cert: x509.Certificate) -> TrustDomain | None:
    """Check a signing (CA) certificate against X509-SVID.md §4.1/§4.3; return the trust domain of
    its URI SAN, or None when it has none (upstream enterprise CAs usually don't)."""
    extensions = _extensions(cert)
    constraints = _basic_constraints(cert)
    if constraints is None or not constraints.ca:
        raise X509SvidError(f"signing certificate {cert.subject.rfc4514_string()!r} must have cA=true (X509-SVID §4.1)")
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise X509SvidError(
            f"signing certificate {cert.subject.rfc4514_string()!r} has no keyUsage; keyCertSign is required (§4.3)"
        ) from None
    if not usage.key_cert_sign:
        raise X509SvidError(f"signing certificate {cert.subject.rfc4514_string()!r} lacks keyUsage keyCertSign (§4.3)")
    uris = _uri_sans(cert)
    if not uris:
        return None
    if len(uris) != 1:
        raise X509SvidError(
            f"signing certificate {cert.subject.rfc4514_string()!r} has {len(uris)} URI SANs; at most one"
        )
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except SpiffeIdError as err:
        raise X509SvidError(f"the URI SAN of signing certificate is not a SPIFFE ID: {err}") from err
    if not spiffe_id.is_trust_domain_id:
        raise X509SvidError(f"signing certificate URI SAN {spiffe_id} has a path; it must be the trust domain ID (§2)")
    return spiffe_id.trust_domain


def verify_x509_svid(
    chain: Sequence[x509.Certificate], bundle_source: BundleSource, now: datetime
) -> tuple[SpiffeId, tuple[x509.Certificate, ...]]:
    """Verify an X509-SVID chain (leaf first, then intermediates) against the bundle of the leaf's own
    trust domain at ``now``. Returns the SPIFFE ID and the verified path (leaf … trust anchor)."""
    if not chain:
        raise X509SvidError("empty certificate chain; an X509-SVID chain starts with the leaf")
    leaf, intermediates = chain[0], list(chain[1:])
    spiffe_id = validate_x509_svid_leaf(leaf)
    for intermediate in intermediates:
        validate_signing_cert(intermediate)
    bundle = bundle_source.get_bundle_for_trust_domain(spiffe_id.trust_domain)
    if bundle is None or not bundle.x509_authorities:
        raise X509SvidError(f"no X.509 bundle for trust domain {spiffe_id.trust_domain}; cannot verify {spiffe_id}")
    verifier = (
        PolicyBuilder()
        .store(Store(list(bundle.x509_authorities)))
        .time(now)
        .max_chain_depth(_MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, intermediates)
    except VerificationError as err:
        raise X509SvidError(
            f"X509-SVID {spiffe_id} does not chain to the bundle of {spiffe_id.trust_domain} "
            f"at {now.isoformat()}: {err}"
        ) from err
    return spiffe_id, tuple(verified.chain)


def load_pem_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM file, in order; refuse a file with none or a malformed one."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise X509SvidError(f"not a PEM certificate file: {err}") from err
    return tuple(certs)


@dataclass(frozen=True, slots=True)
class X509Svid:
    """An X509-SVID with its private key, as a workload (or the agent) holds it."""

    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey = field(repr=False, compare=False)

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.cert_chain)

    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def parse_pem(cls, chain_pem: bytes, key_pem: bytes) -> X509Svid:
        """Read a chain and its key; the leaf must follow the X509-SVID rules and match the key."""
        chain = load_pem_certificates(chain_pem)
        spiffe_id = validate_x509_svid_leaf(chain[0])
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as err:
            raise X509SvidError(f"private key of {spiffe_id} is not an unencrypted PEM key: {err}") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise X509SvidError(f"private key of {spiffe_id} is a {type(key).__name__}; only EC and RSA keys are used")
        if key.public_key() != chain[0].public_key():
            raise X509SvidError(f"private key does not match the leaf certificate of {spiffe_id}")
        return cls(spiffe_id, chain, key)
