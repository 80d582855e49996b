"""Key types trustmesh signs with, and the JOSE algorithm each one implies.

EC P-256 is the default everywhere (DESIGN §6). RSA keys are allowed for authorities and workloads
that must talk to legacy relying parties. The mapping to a JWS ``alg`` is fixed so a key never signs
with an algorithm the JWT-SVID spec does not list.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spiffe_core.errors import InvalidArgument

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyType(enum.StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @classmethod
    def parse(cls, text: str) -> KeyType:
        try:
            return cls(text)
        except ValueError:
            allowed = ", ".join(k.value for k in cls)
            raise InvalidArgument(f"key type {text!r} is not supported; use one of: {allowed}") from None

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa-")


def generate_private_key(key_type: KeyType) -> PrivateKey:
    """Make a fresh private key. RSA generation is slow (tens of ms): callers on an event loop
    should run it in a thread."""
    match key_type:
        case KeyType.EC_P256:
            return ec.generate_private_key(ec.SECP256R1())
        case KeyType.EC_P384:
            return ec.generate_private_key(ec.SECP384R1())
        case _:
            return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type.value.split("-")[1]))


def key_type_of(key: PrivateKey | PublicKey) -> KeyType:
    """Name the type of an existing key; refuse curves and sizes we do not sign with."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return KeyType.EC_P256
        if isinstance(key.curve, ec.SECP384R1):
            return KeyType.EC_P384
        raise InvalidArgument(f"EC curve {key.curve.name} is not supported; use P-256 or P-384")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size in (2048, 3072, 4096):
            return KeyType(f"rsa-{key.key_size}")
        raise InvalidArgument(f"RSA key size {key.key_size} is not supported; use 2048, 3072 or 4096")
    raise InvalidArgument(f"key of type {type(key).__name__} is not supported; use EC P-256/P-384 or RSA")


def jwt_algorithm_for(key: PrivateKey | PublicKey) -> str:
    """The JWS alg a key of this type signs JWT-SVIDs with (ES256, ES384 or RS256)."""
    key_type = key_type_of(key)
    if key_type is KeyType.EC_P256:
        return "ES256"
    if key_type is KeyType.EC_P384:
        return "ES384"
    return "RS256"
