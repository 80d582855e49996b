"""Key types trustmesh signs with and the JWS alg each implies (DESIGN §2, §6; JWT-SVID.md §2.1)."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from spiffe_core.errors import InvalidArgument
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key, jwt_algorithm_for, key_type_of


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


@pytest.fixture(scope="module")
def rsa_2048() -> rsa.RSAPrivateKey:
    """RSA generation is slow: one key for the whole module."""
    key = generate_private_key(KeyType.RSA_2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.mark.parametrize("key_type", list(KeyType), ids=[k.value for k in KeyType])
def test_key_type_parses_its_own_name(key_type: KeyType) -> None:
    assert KeyType.parse(key_type.value) is key_type


@pytest.mark.parametrize("text", ["ec-p521", "EC-P256", "ed25519", "rsa-1024", ""])
def test_key_type_parse_names_the_supported_types(text: str) -> None:
    with pytest.raises(
        InvalidArgument,
        match=exact(f"key type {text!r} is not supported; use one of: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096"),
    ):
        KeyType.parse(text)


def test_only_rsa_key_types_are_rsa() -> None:
    assert [k.value for k in KeyType if k.is_rsa] == ["rsa-2048", "rsa-3072", "rsa-4096"]


@pytest.mark.parametrize(
    ("key_type", "curve"), [(KeyType.EC_P256, ec.SECP256R1), (KeyType.EC_P384, ec.SECP384R1)], ids=["p256", "p384"]
)
def test_generates_ec_keys_on_the_named_curve(key_type: KeyType, curve: type[ec.EllipticCurve]) -> None:
    key = generate_private_key(key_type)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, curve)


def test_generates_rsa_keys_of_the_named_size(rsa_2048: rsa.RSAPrivateKey) -> None:
    assert (rsa_2048.key_size, rsa_2048.public_key().public_numbers().e) == (2048, 65537)


def test_key_type_of_names_private_and_public_keys(rsa_2048: rsa.RSAPrivateKey) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert [key_type_of(k) for k in (p384, p384.public_key(), rsa_2048, rsa_2048.public_key())] == [
        KeyType.EC_P384,
        KeyType.EC_P384,
        KeyType.RSA_2048,
        KeyType.RSA_2048,
    ]


def test_key_type_of_refuses_an_unsupported_curve() -> None:
    with pytest.raises(InvalidArgument, match=exact("EC curve secp521r1 is not supported; use P-256 or P-384")):
        key_type_of(ec.generate_private_key(ec.SECP521R1()))


def test_key_type_of_refuses_an_unsupported_rsa_size() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidArgument, match=exact("RSA key size 1024 is not supported; use 2048, 3072 or 4096")):
        key_type_of(key)


def test_key_type_of_refuses_other_key_algorithms() -> None:
    with pytest.raises(
        InvalidArgument, match=exact("key of type Ed25519PrivateKey is not supported; use EC P-256/P-384 or RSA")
    ):
        key_type_of(ed25519.Ed25519PrivateKey.generate())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key_type", "alg"),
    [(KeyType.EC_P256, "ES256"), (KeyType.EC_P384, "ES384")],
    ids=["p256", "p384"],
)
def test_jwt_algorithm_for_ec_keys_follows_the_curve(key_type: KeyType, alg: str) -> None:
    key: PrivateKey = generate_private_key(key_type)
    assert (jwt_algorithm_for(key), jwt_algorithm_for(key.public_key())) == (alg, alg)


def test_jwt_algorithm_for_rsa_keys_is_rs256(rsa_2048: rsa.RSAPrivateKey) -> None:
    assert jwt_algorithm_for(rsa_2048) == "RS256"
