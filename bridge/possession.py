"""Proof that a host holds the private key of its enterprise certificate (DESIGN §5): the key signs a
message that starts with a context naming the protocol, and the CA checks the signature with the
certificate's public key.

Two protocols prove possession this way: x509pop node attestation (:mod:`bridge.x509pop`, the message
is a nonce the CA chose) and the agentless exchange (:mod:`bridge.exchange`, the message binds the CSR
of the SVID's new key, the CA's identity and the time). Each has its own context string, so a signature
made for one never means anything in the other. The key never leaves the host and never appears in a
message.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from spiffe_core.errors import InvalidArgument, NotAuthorized

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def load_signing_key(data: bytes, what: str) -> SigningKey:
    """The host's enterprise private key from PEM (PKCS#8 or traditional, unencrypted); InvalidArgument
    naming ``what`` for anything else. The key itself never appears in a message."""
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as err:
        raise InvalidArgument(f"{what}: not an unencrypted PEM private key") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise InvalidArgument(f"{what}: a {type(key).__name__}; the bridge signs with EC, RSA or Ed25519 keys")
    return key


def sign(key: SigningKey, message: bytes) -> bytes:
    """``key``'s signature of ``message`` (ECDSA/SHA-256, RSA PKCS#1 v1.5/SHA-256, or Ed25519)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(message)


def verify(cert: x509.Certificate, message: bytes, signature: bytes, fix: str) -> None:
    """NotAuthorized unless ``signature`` is the key of ``cert`` signing ``message``; ``fix`` tells the
    caller's operator what to check (which key file goes with which certificate)."""
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            raise NotAuthorized("proof of possession failed: unsupported key type")
    except InvalidSignature as err:
        raise NotAuthorized(
            f"proof of possession failed: the signature does not verify with the certificate's key; {fix}"
        ) from err
