"""Signing with the hash the key calls for: certificate templates, and plain data (audit checkpoints).

One place decides the digest: SHA-256 for P-256 and RSA keys, SHA-384 for P-384 (so the signature is
as strong as the key, as RFC 5480 recommends). RSA signs plain data with PKCS #1 v1.5, as it signs
certificates.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from spiffe_core.keys import PrivateKey, PublicKey


def digest_for(key: PrivateKey | PublicKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    return builder.sign(key, digest_for(key))


def sign_data(key: PrivateKey, data: bytes) -> bytes:
    """A signature over ``data`` (ECDSA, or RSA PKCS #1 v1.5) that :func:`verify_data` checks."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(digest_for(key)))
    return key.sign(data, padding.PKCS1v15(), digest_for(key))


def verify_data(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``key``'s signature over ``data`` (as :func:`sign_data` makes them)."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(digest_for(key)))
        else:
            key.verify(signature, data, padding.PKCS1v15(), digest_for(key))
    except InvalidSignature:
        return False
    return True
