"""Verifying an enterprise-PKI certificate chain (DESIGN §5): to the configured legacy trust anchors,
within its validity, against the enterprise CRLs — with bounded work per attempt.

SPIRE's x509pop attestor could be driven to disproportionate CPU by what a client presented (fixed in
1.14.2), so the cheap checks come before any signature is verified: how many certificates were
presented, then the size and kind of every public key, then validity times. Only then is the chain
built to an anchor (cryptography's path builder, WebPKI rules for the CAs, any extensions on the leaf:
enterprise host certificates are often server-only), and the CRLs checked.

Every refusal says which check failed — "expired", "revoked", "untrusted CA", "chain too long",
"key too large" — because the caller is a host its operator is trying to onboard; none of these
reasons tells an attacker anything the certificate did not already.

CRLs: a CRL counts for a certificate when its issuer name is the certificate's issuer and its
signature verifies with that issuer's key (the next certificate of the verified chain). A stale CRL
(past its next update) refuses the certificates it covers: fail closed. An issuer without a
configured CRL is not revocation-checked (documented in docs/bridge.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from spiffe_core.errors import InvalidArgument, NotAuthorized

DEFAULT_MAX_CHAIN_LENGTH = 4  # certificates presented, leaf included
DEFAULT_MAX_RSA_BITS = 4096
MIN_RSA_BITS = 2048
# Bytes of certificate material one attempt may present (a certificate is 1-2 KiB).
MAX_PRESENTED_BYTES = 64 * 1024
# An anchor or CRL file the operator configures (an enterprise CRL can list many serials).
MAX_PKI_FILE_BYTES = 16 * 1024 * 1024
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """A named set of enterprise root certificates (``[bridge.trust_anchors] <name> = "<file>"``)."""

    name: str
    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class ChainLimits:
    max_chain_length: int = DEFAULT_MAX_CHAIN_LENGTH
    max_rsa_bits: int = DEFAULT_MAX_RSA_BITS


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    """A chain that passed: leaf first, the anchor certificate last; ``anchor`` names its trust anchor."""

    chain: tuple[x509.Certificate, ...]
    anchor: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def check_public_key(cert: x509.Certificate, limits: ChainLimits) -> None:
    """Refuse keys whose verification costs more than ``limits`` allow, or that are too weak."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size > limits.max_rsa_bits:
            raise NotAuthorized(
                f"key too large: {_subject(cert)} has a {key.key_size}-bit RSA key; at most "
                f"{limits.max_rsa_bits} bits are accepted (bridge.max_rsa_bits)"
            )
        if key.key_size < MIN_RSA_BITS:
            raise NotAuthorized(f"key too small: {_subject(cert)} has a {key.key_size}-bit RSA key; at least 2048")
        return
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES):
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise NotAuthorized(f"unsupported key: {_subject(cert)} has a key of a kind the bridge does not accept")


class LegacyTrust:
    """The legacy trust anchors and enterprise CRLs one verification uses (read fresh per attempt by
    the caller, so a replaced CRL file counts at once)."""

    def __init__(
        self,
        anchors: Sequence[TrustAnchor],
        crls: Sequence[x509.CertificateRevocationList] = (),
        limits: ChainLimits = ChainLimits(),
    ) -> None:
        self._anchors = tuple(anchors)
        self._crls = tuple(crls)
        self._limits = limits

    def verify(self, presented: Sequence[x509.Certificate], now: datetime) -> VerifiedChain:
        """Verify ``presented`` (leaf first, then intermediates) at ``now``; NotAuthorized saying which
        check failed."""
        if not presented:
            raise InvalidArgument("no certificate presented; present the enterprise certificate and its chain")
        limit = self._limits.max_chain_length
        if len(presented) > limit:
            raise NotAuthorized(
                f"chain too long: {len(presented)} certificates presented, at most {limit} accepted "
                "(bridge.max_chain_length)"
            )
        for cert in presented:
            check_public_key(cert, self._limits)
        for cert in presented:
            if now >= cert.not_valid_after_utc:
                raise NotAuthorized(f"expired: {_subject(cert)} expired at {cert.not_valid_after_utc.isoformat()}")
            if now < cert.not_valid_before_utc:
                raise NotAuthorized(
                    f"not yet valid: {_subject(cert)} is valid from {cert.not_valid_before_utc.isoformat()}"
                )
        verified = self._build(presented, now)
        if len(verified.chain) > limit + 1:  # presented certificates and the anchor
            raise NotAuthorized(
                f"chain too long: {len(verified.chain)} certificates up to the trust anchor, at most {limit + 1} "
                "(bridge.max_chain_length)"
            )
        self._check_revocation(verified.chain, now)
        return verified

    def _build(self, presented: Sequence[x509.Certificate], now: datetime) -> VerifiedChain:
        leaf, intermediates = presented[0], list(presented[1:])
        for anchor in self._anchors:
            verifier = (
                PolicyBuilder()
                .store(Store(list(anchor.certificates)))
                .time(now)
                .max_chain_depth(self._limits.max_chain_length)
                .extension_policies(
                    ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
                )
                .build_client_verifier()
            )
            try:
                chain = verifier.verify(leaf, intermediates).chain
            except VerificationError:
                continue
            return VerifiedChain(tuple(chain), anchor.name)
        names = ", ".join(anchor.name for anchor in self._anchors) or "none configured"
        raise NotAuthorized(
            f"untrusted CA: {_subject(leaf)} (issued by {leaf.issuer.rfc4514_string()}) does not chain to a "
            f"configured trust anchor ({names})"
        )

    def _check_revocation(self, chain: Sequence[x509.Certificate], now: datetime) -> None:
        for cert, issuer in itertools.pairwise(chain):
            for crl in self._crls:
                if crl.issuer != cert.issuer or not _signed_by(crl, issuer):
                    continue
                if crl.next_update_utc is not None and crl.next_update_utc <= now:
                    raise NotAuthorized(
                        f"revocation unknown: the CRL of {crl.issuer.rfc4514_string()} is stale (next update was "
                        f"{crl.next_update_utc.isoformat()}); publish a fresh CRL to the configured file"
                    )
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    raise NotAuthorized(
                        f"revoked: {_subject(cert)} (serial {cert.serial_number:x}) is listed in the CRL of "
                        f"{crl.issuer.rfc4514_string()}"
                    )


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (InvalidSignature, TypeError, ValueError):
        return False


def read_pki_file(path: Path, what: str) -> bytes:
    """The bytes of a certificate or CRL file (at most :data:`MAX_PKI_FILE_BYTES`); InvalidArgument
    naming the file and ``what`` it was for."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PKI_FILE_BYTES + 1)
    except OSError as err:
        raise InvalidArgument(f"cannot read {what} {path} ({err.strerror})") from err
    if len(data) > MAX_PKI_FILE_BYTES:
        raise InvalidArgument(f"{what} {path} is larger than {MAX_PKI_FILE_BYTES} bytes")
    return data


def load_legacy_trust(anchors: Mapping[str, Path], crl_files: Sequence[Path], limits: ChainLimits) -> LegacyTrust:
    """The trust anchors (name -> PEM file) and CRLs read from their files now: the CA calls this on
    every attempt, so a replaced CRL counts at once. InvalidArgument names a file that cannot be read."""
    return LegacyTrust(
        [
            TrustAnchor(name, load_certificates(read_pki_file(path, "trust anchor"), str(path)))
            for name, path in anchors.items()
        ],
        [crl for path in crl_files for crl in load_crls(read_pki_file(path, "CRL"), str(path))],
        limits,
    )


def load_certificates(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """PEM certificates (or one DER certificate) from ``data``; InvalidArgument naming ``what``."""
    if len(data) > MAX_PRESENTED_BYTES:
        raise InvalidArgument(f"{what}: {len(data)} bytes of certificates, more than {MAX_PRESENTED_BYTES}")
    try:
        if b"-----BEGIN" in data:
            certs = tuple(x509.load_pem_x509_certificates(data))
        else:
            certs = (x509.load_der_x509_certificate(data),)
    except ValueError as err:
        raise InvalidArgument(f"{what}: not a PEM or DER certificate ({err})") from err
    return certs


def load_crls(data: bytes, what: str) -> tuple[x509.CertificateRevocationList, ...]:
    """The CRLs in a PEM (one or more) or DER file."""
    try:
        if b"-----BEGIN" in data:
            blocks = data.split(b"-----END X509 CRL-----")
            return tuple(
                x509.load_pem_x509_crl(block + b"-----END X509 CRL-----\n")
                for block in blocks
                if b"-----BEGIN" in block
            )
        return (x509.load_der_x509_crl(data),)
    except ValueError as err:
        raise InvalidArgument(f"{what}: not a PEM or DER CRL ({err})") from err
