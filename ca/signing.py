"""Signing with the hash the key calls for: certificate templates, and plain data (audit checkpoints).

One place decides the digest: SHA-256 for P-256 and RSA keys, SHA-384 for P-384 (so the signature is
as strong as the key, as RFC 5480 recommends). RSA signs plain data with PKCS #1 v1.5, as it signs
certificates.

:func:`sign_all` signs many templates with one key. A key in the CA's memory signs them one by one,
exactly as :func:`sign` does. A key that signs in batches (:class:`BatchSigningKey`, a
Vault transit key) gets one request for all of them: cryptography cannot sign a certificate's
to-be-signed part (TBSCertificate) later, but that part does not depend on the signing key, only on
the template and the signature algorithm — so each template is signed by a throwaway *stand-in* key
of the same algorithm, the stand-in's TBSCertificates are signed in one batch, and each certificate
is assembled as ``SEQUENCE { tbsCertificate, signatureAlgorithm, BIT STRING signature }`` (RFC 5280
§4.1) around the real signature. The batch key checks every signature against its public key, as its
single ``sign`` does; the stand-in's signatures are thrown away.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol, cast, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from spiffe_core.keys import PrivateKey, PublicKey

_DER_SEQUENCE = 0x30
_DER_BIT_STRING = 0x03


@runtime_checkable
class BatchSigningKey(Protocol):
    """A private key that signs many messages in one request (a Vault transit key,
    :mod:`ca.keys.vault_transit`): one round trip per batch instead of one per signature. Keys in the
    CA's memory do not implement it; they sign each message in the process, which costs less."""

    def sign_batch(self, messages: Sequence[bytes], algorithm: hashes.HashAlgorithm) -> list[bytes]:
        """One signature per message, in order, as :func:`sign_data` makes them (ECDSA DER, or RSA
        PKCS#1 v1.5) with hash ``algorithm``, each checked against the public key before it is
        returned. Raises for the whole batch if any signature cannot be had or does not verify."""
        ...


def digest_for(key: PrivateKey | PublicKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    return builder.sign(key, digest_for(key))


def sign_all(builders: Sequence[x509.CertificateBuilder], key: PrivateKey) -> list[x509.Certificate]:
    """The certificates of ``builders``, in order, signed by ``key``: in one batch request when the key
    signs in batches (see the module docstring), else one by one in the process as :func:`sign` signs.
    A batch fails as a whole with the key's error."""
    if not signs_in_batches(key):
        return [sign(builder, key) for builder in builders]
    batch_key = cast(BatchSigningKey, key)
    digest = digest_for(key)
    stand_in = _stand_in(isinstance(key, rsa.RSAPrivateKey))
    drafts = [builder.sign(stand_in, digest) for builder in builders]
    signatures = batch_key.sign_batch([draft.tbs_certificate_bytes for draft in drafts], digest)
    return [_resigned(draft, signature) for draft, signature in zip(drafts, signatures, strict=True)]


def signs_in_batches(key: PrivateKey) -> bool:
    """Whether ``key`` is a :class:`BatchSigningKey` (one that answers over the network, in batches)."""
    return _batch_class(type(key))


@functools.lru_cache(maxsize=64)
def _batch_class(key_class: type) -> bool:
    """Decided once per class: an ``isinstance`` against a runtime-checkable protocol inspects the
    protocol's members on every call, which cost about 5% of a one-SVID issuance. The protocol's member
    is a method, so the class decides."""
    return issubclass(key_class, BatchSigningKey)


@functools.cache
def _stand_in(rsa_key: bool) -> PrivateKey:
    """A throwaway key whose certificates carry the same signature AlgorithmIdentifier as the real
    key's: ECDSA's and PKCS#1 v1.5's name only the hash (no curve, no key size), so the cheapest key of
    each kind serves every real key of that kind. Its signatures are discarded unread, so its size only
    sets what the discarded signature costs."""
    if rsa_key:
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (never trusted)
    return ec.generate_private_key(ec.SECP256R1())


def _resigned(draft: x509.Certificate, signature: bytes) -> x509.Certificate:
    """``draft`` with its signature replaced: its TBSCertificate and signatureAlgorithm, as DER."""
    der = draft.public_bytes(serialization.Encoding.DER)
    tbs = draft.tbs_certificate_bytes
    header, _ = _header(der, 0)
    algorithm = _element(der, header + len(tbs))
    bit_string = _der(_DER_BIT_STRING, b"\x00" + signature)  # no unused bits
    return x509.load_der_x509_certificate(_der(_DER_SEQUENCE, tbs + algorithm + bit_string))


def _element(der: bytes, at: int) -> bytes:
    """The DER element (tag, length and content) that starts at ``at``."""
    header, size = _header(der, at)
    return der[at : at + header + size]


def _header(der: bytes, at: int) -> tuple[int, int]:
    """(length of the tag and length octets, length of the content) of the DER element at ``at``."""
    first = der[at + 1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    return 2 + count, int.from_bytes(der[at + 2 : at + 2 + count], "big")


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


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
