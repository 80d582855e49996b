"""Certificate revocation lists (DESIGN §3 "Leaf revocation → signed CRL per authority", RFC 5280 §5).

Pure: the caller reads the revoked serials from the datastore and the signing key from the key
manager, and publishes the result. Each authority signs the CRL of what it issued; the upstream root
signs the CRL of the trustmesh intermediates (:meth:`ca.upstream.DiskUpstream.root_crl`). As with
everything the CA signs, a CRL is verified against its issuer's key before it leaves this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509

from ca.signing import digest_for
from spiffe_core.errors import InvalidArgument, TrustmeshError
from spiffe_core.keys import PrivateKey

# The reason words of the CLI (RFC 5280 §5.3.1 names, in kebab case). certificateHold and
# removeFromCRL are left out: trustmesh never suspends a certificate, a revocation is final.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class RevokedSerial:
    """One entry of a CRL: a revoked certificate's serial, when it was revoked, and why (None: unsaid)."""

    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags | None


def parse_reason(text: str) -> x509.ReasonFlags:
    """The reason flag for a CLI reason word; raises :class:`InvalidArgument` listing the valid words."""
    try:
        return REASONS[text]
    except KeyError:
        raise InvalidArgument(f"revocation reason {text!r} is not known; use one of: {', '.join(REASONS)}") from None


def crl_number(now: datetime) -> int:
    """The CRLNumber of a CRL built at ``now``: microseconds of wall time since the Unix epoch.

    RFC 5280 §5.2.3 wants CRL numbers to grow; deriving them from time (like ``ca.sync.UpdateVersions``)
    keeps them growing across restarts and CA replicas without a shared counter."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgument(f"time {now.isoformat()} has no time zone; pass an aware UTC datetime")
    return (now - _EPOCH) // timedelta(microseconds=1)


def build_crl(
    *,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    revoked: Sequence[RevokedSerial],
    this_update: datetime,
    next_update: datetime,
    number: int,
) -> x509.CertificateRevocationList:
    """Sign the CRL of ``issuer`` listing ``revoked``, with ``number`` as its CRLNumber.

    Raises :class:`InvalidArgument` when ``issuer_key`` is not the key of ``issuer``, when the issuer's
    key usage does not allow signing CRLs, or when ``next_update`` is not after ``this_update``. Raises
    :class:`TrustmeshError` if the signed CRL does not verify with the issuer's key (a signing bug)."""
    issuer_name = issuer.subject.rfc4514_string()
    issuer_public_key = issuer.public_key()
    if issuer_public_key != issuer_key.public_key():
        raise InvalidArgument(f"the key given to sign the CRL of {issuer_name!r} is not that certificate's key")
    if not _may_sign_crls(issuer):
        raise InvalidArgument(
            f"certificate {issuer_name!r} has a key usage without cRLSign, so relying parties would refuse its "
            "CRLs; sign them with a CA certificate whose key usage includes cRLSign"
        )
    if next_update <= this_update:
        raise InvalidArgument(
            f"CRL nextUpdate {next_update.isoformat()} is not after thisUpdate {this_update.isoformat()}"
        )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(_authority_key_identifier(issuer), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(_revoked_certificate(entry))
    crl = builder.sign(issuer_key, digest_for(issuer_key))
    if not crl.is_signature_valid(issuer_public_key):  # type: ignore[arg-type]  # our keys are EC or RSA
        raise TrustmeshError(f"the CRL just signed for {issuer_name!r} does not verify with its key")
    return crl


def _authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The issuer's subject key identifier when it has one (RFC 5280 §4.2.1.1 wants the two equal, and
    an enterprise CA may not derive its SKI from the key the usual way), else one derived from its key."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _may_sign_crls(issuer: x509.Certificate) -> bool:
    try:
        return issuer.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
    except x509.ExtensionNotFound:
        return True


def _revoked_certificate(entry: RevokedSerial) -> x509.RevokedCertificate:
    builder = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
    if entry.reason is not None and entry.reason is not x509.ReasonFlags.unspecified:
        # RFC 5280 §5.3.1: the reason code should be absent rather than say "unspecified".
        builder = builder.add_extension(x509.CRLReason(entry.reason), critical=False)
    return builder.build()
