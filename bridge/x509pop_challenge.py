"""x509pop's challenge, stateless: everything the CA needs to check an answer travels in the nonce
itself, sealed with an HMAC, so any CA replica can check a nonce that another one issued and no
replica holds pending challenges that callers could pile up or push out.

A nonce is ``version ‖ 32 random bytes ‖ expiry ‖ leaf fingerprint ‖ MAC`` (105 bytes):

* the random bytes make every nonce unique, so a signature over one answers no other;
* the expiry (Unix seconds, 8 bytes big-endian) bounds how long a nonce can be answered;
* the fingerprint (SHA-256 of the leaf certificate's DER) binds the nonce to the chain it was issued
  for: answering it with another chain is refused even when that chain is valid too;
* the MAC (HMAC-SHA256 under a key every replica shares, over a domain-separation prefix and all of
  the above) makes the rest unforgeable: nobody without the key can mint a nonce, move its expiry or
  rebind it. MACs are compared in constant time.

Single use is the datastore's job (the CA records :func:`used_digest` of every nonce whose proof
succeeded, under a unique key, until the nonce expires): statelessness covers issuing, not spending.
Pure: the key, the time and the random bytes come in as arguments.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spiffe_core.errors import NotAuthorized

VERSION = 1
RANDOM_BYTES = 32
KEY_BYTES = 32
_FINGERPRINT_BYTES = 32
_MAC_BYTES = 32
_EXPIRY_BYTES = 8
NONCE_BYTES = 1 + RANDOM_BYTES + _EXPIRY_BYTES + _FINGERPRINT_BYTES + _MAC_BYTES
_MAC_CONTEXT = b"trustmesh x509pop challenge v1\n"
FORGED = "x509pop challenge was not issued by this trust domain's CA, or was altered; start the attestation again"


@dataclass(frozen=True, slots=True)
class Challenge:
    """What an opened nonce says: until when it may be answered, and for which leaf certificate."""

    expires_at: datetime
    leaf_fingerprint: bytes


def leaf_fingerprint(leaf: x509.Certificate) -> bytes:
    """SHA-256 of the leaf certificate's DER: what a nonce is bound to."""
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _MAC_CONTEXT + body, hashlib.sha256).digest()


def seal(key: bytes, leaf: x509.Certificate, expires_at: datetime, random: bytes) -> bytes:
    """The nonce for ``leaf``, answerable until ``expires_at`` (whole seconds, rounded down)."""
    if len(key) < KEY_BYTES or len(random) != RANDOM_BYTES:
        raise ValueError(f"a challenge needs a key of at least {KEY_BYTES} bytes and {RANDOM_BYTES} random bytes")
    body = (
        bytes([VERSION]) + random + int(expires_at.timestamp()).to_bytes(_EXPIRY_BYTES, "big") + leaf_fingerprint(leaf)
    )
    return body + _mac(key, body)


def open_nonce(key: bytes, nonce: bytes) -> Challenge:
    """What ``nonce`` says, once its MAC checks out under ``key``; NotAuthorized (:data:`FORGED`) for a
    nonce of another length or version, or whose MAC does not match (forged, altered, or sealed under
    another key). Expiry is the caller's to check."""
    if len(nonce) != NONCE_BYTES or nonce[0] != VERSION:
        raise NotAuthorized(FORGED)
    body, mac = nonce[:-_MAC_BYTES], nonce[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise NotAuthorized(FORGED)
    expiry_at = 1 + RANDOM_BYTES
    seconds = int.from_bytes(body[expiry_at : expiry_at + _EXPIRY_BYTES], "big")
    return Challenge(datetime.fromtimestamp(seconds, UTC), body[expiry_at + _EXPIRY_BYTES :])


def used_digest(nonce: bytes) -> str:
    """The key under which a used nonce is recorded (SHA-256, hex): the nonce itself is not kept."""
    return hashlib.sha256(nonce).hexdigest()
