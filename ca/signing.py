"""Signing a certificate template with the hash the key calls for.

One place decides the digest: SHA-256 for P-256 and RSA keys, SHA-384 for P-384 (so the signature is
as strong as the key, as RFC 5480 recommends).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from spiffe_core.keys import PrivateKey


def digest_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    return builder.sign(key, digest_for(key))
