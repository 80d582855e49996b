"""The ``vault-transit`` key manager (DESIGN §3 "Key custody", docs/vault.md): keys are created in
Vault non-exportable, Vault signs, every signature is checked against the key's public key, and no
private key material ever reaches the CA — against the in-test Vault-API server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.crl import RevokedSerial, build_crl
from ca.keys.vault_transit import VaultTransitKeyManager
from ca.signing import sign
from ca.vault import VaultClient
from spiffe_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from spiffe_core.keys import KeyType, PrivateKey, key_type_of
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import signing_cert_builder
from tests.support.vault_server import FakeVault, token_config

TD = TrustDomain("example.org")


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    with FakeVault().running() as server:
        yield server


@pytest.fixture
def manager(vault: FakeVault, tmp_path: Path) -> VaultTransitKeyManager:
    client = VaultClient(token_config(vault, tmp_path), "vault-transit key manager", "ca.key_manager.transit_mount")
    return VaultTransitKeyManager(client, "transit", "trustmesh-")


def self_signed_ca(key: PrivateKey) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "transit CA")])
    builder = signing_cert_builder(
        trust_domain=TD,
        public_key=key.public_key(),
        subject=name,
        issuer_name=None,
        issuer_public_key=None,
        not_before=now,
        not_after=now + timedelta(hours=1),
    )
    return sign(builder, key)


def vault_public_key(vault: FakeVault, name: str) -> bytes:
    return (
        vault.transit[name]
        .private_key.public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(
    "key_type",
    [
        pytest.param(KeyType.EC_P256, id="ec-p256"),
        pytest.param(KeyType.EC_P384, id="ec-p384"),
        pytest.param(KeyType.RSA_2048, id="rsa-2048"),
    ],
)
def test_a_generated_key_lives_in_vault_and_signs_certificates_that_verify(
    manager: VaultTransitKeyManager, vault: FakeVault, key_type: KeyType
) -> None:
    key = manager.generate("x509-1", key_type)

    cert = self_signed_ca(key)

    cert.verify_directly_issued_by(cert)  # raises unless Vault's signature verifies
    assert key_type_of(key) is key_type
    assert der(key) == vault_public_key(vault, "trustmesh-x509-1")
    assert vault.count("POST", "transit/sign/trustmesh-x509-1") == 1


def test_keys_are_created_non_exportable_without_plaintext_backup(
    manager: VaultTransitKeyManager, vault: FakeVault
) -> None:
    manager.generate("x509-1", KeyType.EC_P256)

    created = vault.transit["trustmesh-x509-1"]
    assert (created.type, created.exportable, created.allow_plaintext_backup) == ("ecdsa-p256", False, False)


def test_get_returns_the_same_vault_key(manager: VaultTransitKeyManager) -> None:
    key = manager.generate("x509-1", KeyType.EC_P256)

    assert der(manager.get("x509-1")) == der(key)


def test_a_transit_key_signs_crls_csrs_and_jwts(manager: VaultTransitKeyManager) -> None:
    key = manager.generate("x509-1", KeyType.EC_P256)
    ca = self_signed_ca(key)
    now = datetime.now(UTC)

    crl = build_crl(
        issuer=ca,
        issuer_key=key,
        revoked=[RevokedSerial(7, now, None)],
        this_update=now,
        next_update=now + timedelta(hours=1),
        number=1,
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(ca.subject).sign(key, hashes.SHA256())
    token = jwt.encode({"sub": "spiffe://example.org/web"}, key, algorithm="ES256")

    assert crl.is_signature_valid(key.public_key())  # type: ignore[arg-type]
    assert csr.is_signature_valid
    assert jwt.decode(token, key.public_key(), algorithms=["ES256"])["sub"] == "spiffe://example.org/web"  # type: ignore[arg-type]


def test_the_private_key_cannot_be_exported(manager: VaultTransitKeyManager) -> None:
    key = manager.generate("x509-1", KeyType.EC_P256)
    refusal = (
        "vault-transit key manager: key trustmesh-x509-1 lives in Vault's transit engine; it cannot be exported, "
        "only Vault signs with it"
    )

    with pytest.raises(FailedPrecondition) as by_bytes:
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    with pytest.raises(FailedPrecondition) as by_numbers:
        key.private_numbers()
    assert str(by_bytes.value) == str(by_numbers.value) == refusal


def test_a_signature_vault_made_with_another_key_is_refused(manager: VaultTransitKeyManager, vault: FakeVault) -> None:
    key = manager.generate("x509-1", KeyType.EC_P256)
    vault.transit["trustmesh-x509-1"].private_key = ec.generate_private_key(ec.SECP256R1())  # replaced in Vault

    with pytest.raises(FailedPrecondition) as caught:
        self_signed_ca(key)

    assert str(caught.value) == (
        f"vault-transit key manager: Vault at {vault.address} returned a signature of transit/sign/trustmesh-x509-1 "
        "that does not verify with that key's public key; refusing it (was the key rotated or replaced in Vault?)"
    )


def test_generate_refuses_a_taken_key_id(manager: VaultTransitKeyManager, vault: FakeVault) -> None:
    first = manager.generate("x509-1", KeyType.EC_P256)

    with pytest.raises(AlreadyExists, match=r"^key 'x509-1' exists already in Vault transit .*; choose a new key ID$"):
        manager.generate("x509-1", KeyType.EC_P256)
    assert der(manager.get("x509-1")) == der(first)


def test_get_refuses_an_exportable_key_under_the_ca_s_name(manager: VaultTransitKeyManager, vault: FakeVault) -> None:
    manager.generate("x509-1", KeyType.EC_P256)
    vault.transit["trustmesh-x509-1"].exportable = True  # made by someone else, or reconfigured

    with pytest.raises(FailedPrecondition, match=r"transit/keys/trustmesh-x509-1 at .* is exportable"):
        manager.get("x509-1")


def test_delete_removes_the_key_from_vault_and_is_idempotent(manager: VaultTransitKeyManager, vault: FakeVault) -> None:
    manager.generate("x509-1", KeyType.EC_P256)

    manager.delete("x509-1")
    manager.delete("x509-1")

    assert "trustmesh-x509-1" not in vault.transit
    with pytest.raises(NotFound):
        manager.get("x509-1")


def test_list_names_only_keys_with_the_prefix_and_when_they_were_made(
    manager: VaultTransitKeyManager, vault: FakeVault, tmp_path: Path
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    manager.generate("x509-1", KeyType.EC_P256)
    manager.generate("jwt-1", KeyType.EC_P256)
    other = VaultClient(token_config(vault, tmp_path, "root"), "another user", "transit_mount")
    VaultTransitKeyManager(other, "transit", "someone-else-").generate("x509-9", KeyType.EC_P256)

    listed = dict(manager.list())

    assert sorted(listed) == ["jwt-1", "x509-1"]
    assert all(before <= created <= datetime.now(UTC) for created in listed.values())


def test_list_of_an_empty_mount_is_empty(manager: VaultTransitKeyManager) -> None:
    assert manager.list() == ()


def test_a_bad_key_id_is_refused_before_vault_is_asked(manager: VaultTransitKeyManager, vault: FakeVault) -> None:
    with pytest.raises(InvalidArgument, match=r"^key ID '\.\./escape' is not allowed"):
        manager.get("../escape")

    assert vault.requests == []
