"""Signed checkpoints of the audit chain's head (issue 8): what is signed, and whether a stored
checkpoint can be believed.

The hash chain shows any record edited, deleted or moved *before* the newest one, but not records cut
off the end: a shorter chain is still a chain. So every ``[audit] checkpoint_interval`` the CA signs the
head (the last record's ID and hash, and the time) with the active X.509 authority's private key and
stores the signature with the authority's certificate (:mod:`ca.audit_task`). ``audit verify`` then
requires the log to reach, unchanged, every checkpoint it can believe.

A checkpoint is believed only when its certificate is one this CA trusts without the datastore's word
for it: one of the X.509 authorities it holds the keys of, or one issued by a root in its bundle
(an enterprise upstream). Anyone who can write the datastore can add a checkpoint, but not sign one
with such a key. A checkpoint signed by an authority the CA has since pruned (self-signed ones leave
nothing to chain to) cannot be checked and is counted apart, not as evidence.

Limits (docs/audit.md): records written after the newest checkpoint can be cut without a trace, and
someone who can delete rows can delete the newest checkpoints together with the records they cover;
``audit verify`` reports how old the newest checkpoint is, and the SIEM export is the copy out of reach.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ca.authority import AuthoritySet, X509Authority, authority_id_for
from ca.keys.base import KeyManager
from ca.signing import sign_data, verify_data
from ca.store.records import AuditCheckpoint, AuthorityKind, AuthorityRecord
from spiffe_core.errors import TrustmeshError
from spiffe_core.keys import PublicKey

# Names what is signed, so a checkpoint signature can never be mistaken for anything else the
# authority's key signs (certificates and CRLs are DER, never this text).
_DOMAIN = "trustmesh-audit-checkpoint-v1"


def checkpoint_message(at: datetime, last_id: int, last_hash: str, authority_id: str) -> bytes:
    """The exact bytes a checkpoint's signature covers."""
    fields = {
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "authority_id": authority_id,
        "last_hash": last_hash,
        "last_id": last_id,
        "what": _DOMAIN,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A checkpoint about to be stored."""

    at: datetime
    last_id: int
    last_hash: str
    authority_id: str
    certificate_der: bytes
    signature: bytes


def sign_head(authority: X509Authority, at: datetime, last_id: int, last_hash: str) -> SignedHead:
    """Sign the chain's head with ``authority``'s key."""
    message = checkpoint_message(at, last_id, last_hash, authority.id)
    return SignedHead(
        at=at,
        last_id=last_id,
        last_hash=last_hash,
        authority_id=authority.id,
        certificate_der=authority.certificate.public_bytes(serialization.Encoding.DER),
        signature=sign_data(authority.private_key, message),
    )


class Verdict(enum.Enum):
    VERIFIED = "verified"
    # Signed by an authority this CA no longer holds or chains to: neither evidence nor a problem.
    UNVERIFIABLE = "unverifiable"
    # Its certificate is trusted, but the signature, the authority ID or the time does not match it.
    FORGED = "forged"


@dataclass(frozen=True, slots=True)
class CheckpointTrust:
    """The certificates checkpoints may be signed with: the authorities this CA holds, by DER, and the
    bundle's roots (which an authority's certificate may be issued by)."""

    authorities: frozenset[bytes]
    roots: tuple[x509.Certificate, ...]

    @classmethod
    def of(cls, authorities: AuthoritySet) -> CheckpointTrust:
        held = frozenset(a.certificate.public_bytes(serialization.Encoding.DER) for a in authorities.x509)
        return cls(held, tuple(authorities.bundle.x509_authorities))

    @classmethod
    def of_held_keys(cls, records: Iterable[AuthorityRecord], keys: KeyManager) -> CheckpointTrust:
        """For checking a datastore without the CA that runs on it: the X.509 authorities in ``records``
        whose certificate is for a key ``keys`` holds. The datastore's word alone is not enough — anyone
        who can write it can add an authority — but the key manager is out of its reach. No bundle roots:
        a stopped CA's upstream is not consulted, so checkpoints of pruned authorities are unverifiable."""
        held: set[bytes] = set()
        for record in records:
            if record.kind is not AuthorityKind.X509 or record.certificate_der is None:
                continue
            try:
                key = keys.get(record.key_ref)
            except TrustmeshError:
                continue  # pruned, or a row someone added: not an authority of this CA
            certificate = x509.load_der_x509_certificate(record.certificate_der)
            if _der(certificate.public_key()) == _der(key.public_key()):
                held.add(record.certificate_der)
        return cls(frozenset(held), ())

    def trusts(self, certificate_der: bytes) -> x509.Certificate | None:
        """The certificate, parsed, when it is trusted; None otherwise (or when it is not one)."""
        try:
            certificate = x509.load_der_x509_certificate(certificate_der)
        except ValueError:
            return None
        if certificate_der in self.authorities:
            return certificate
        return certificate if _issued_by_any(certificate, self.roots) else None


def _der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issued_by_any(certificate: x509.Certificate, roots: Iterable[x509.Certificate]) -> bool:
    for root in roots:
        try:
            certificate.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def judge(checkpoint: AuditCheckpoint, trust: CheckpointTrust) -> Verdict:
    """Whether ``checkpoint`` is signed by a trusted authority, as it claims, while that was valid."""
    certificate = trust.trusts(checkpoint.certificate_der)
    if certificate is None:
        return Verdict.UNVERIFIABLE
    public_key: PublicKey = certificate.public_key()  # type: ignore[assignment]  # CA keys are EC or RSA
    message = checkpoint_message(checkpoint.at, checkpoint.last_id, checkpoint.last_hash, checkpoint.authority_id)
    if (
        authority_id_for(public_key) != checkpoint.authority_id
        or not certificate.not_valid_before_utc <= checkpoint.at <= certificate.not_valid_after_utc
        or not verify_data(public_key, checkpoint.signature, message)
    ):
        return Verdict.FORGED
    return Verdict.VERIFIED
