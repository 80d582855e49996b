"""Signed checkpoints of the audit chain's head (ca/audit_checkpoints.py): what is signed, and which
checkpoints are believed — signed by an authority the CA holds or one issued by a root of its bundle,
over exactly the head it names, while that authority was valid."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.audit_checkpoints import CheckpointTrust, Verdict, checkpoint_message, judge, sign_head
from ca.authority import AuthoritySet, AuthorityState, X509Authority, authority_id_for, build_bundle
from ca.keys.memory import MemoryKeyManager
from ca.signing import sign
from ca.store.records import AuditCheckpoint, AuthorityKind, AuthorityRecord
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import signing_cert_builder

TD = TrustDomain("example.org")
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
HASH = "ab" * 32


def ca_certificate(key: PrivateKey, issuer: tuple[x509.Certificate, PrivateKey] | None = None) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, authority_id_for(key.public_key()))])
    builder = signing_cert_builder(
        trust_domain=TD,
        public_key=key.public_key(),
        subject=subject,
        issuer_name=None if issuer is None else issuer[0].subject,
        issuer_public_key=None if issuer is None else issuer[1].public_key(),
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=1),
    )
    return sign(builder, key if issuer is None else issuer[1])


def authority(key_type: KeyType = KeyType.EC_P256) -> X509Authority:
    key = generate_private_key(key_type)
    return X509Authority(authority_id_for(key.public_key()), ca_certificate(key), key, AuthorityState.ACTIVE)


def authority_set(*authorities: X509Authority) -> AuthoritySet:
    return AuthoritySet(TD, authorities, (), build_bundle(TD, authorities, (), sequence=1, refresh_hint=300))


def stored(signer: X509Authority, last_id: int = 7, at: datetime = NOW) -> AuditCheckpoint:
    head = sign_head(signer, at, last_id, HASH)
    return AuditCheckpoint(
        1, head.at, head.last_id, head.last_hash, head.authority_id, head.certificate_der, head.signature
    )


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_a_checkpoint_signed_by_a_held_authority_verifies(key_type: KeyType) -> None:
    signer = authority(key_type)
    assert judge(stored(signer), CheckpointTrust.of(authority_set(signer))) is Verdict.VERIFIED


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param({"last_id": 8}, id="last-id"),
        pytest.param({"last_hash": "cd" * 32}, id="last-hash"),
        pytest.param({"at": NOW + timedelta(seconds=1)}, id="time"),
    ],
)
def test_an_edited_checkpoint_is_forged(edit: dict[str, object]) -> None:
    signer = authority()
    edited = replace(stored(signer), **edit)  # type: ignore[arg-type]
    assert judge(edited, CheckpointTrust.of(authority_set(signer))) is Verdict.FORGED


def test_a_checkpoint_naming_another_authority_than_its_certificates_is_forged() -> None:
    signer, other = authority(), authority()
    claimed = replace(stored(signer), authority_id=other.id)
    assert judge(claimed, CheckpointTrust.of(authority_set(signer, other))) is Verdict.FORGED


def test_a_checkpoint_dated_outside_its_certificates_validity_is_forged() -> None:
    signer = authority()
    assert judge(stored(signer, at=NOW + timedelta(days=2)), CheckpointTrust.of(authority_set(signer))) is (
        Verdict.FORGED
    )


def test_a_checkpoint_signed_by_a_key_the_ca_does_not_hold_is_not_believed() -> None:
    """Whoever can write the datastore can add a checkpoint with a certificate of their own."""
    held, attacker = authority(), authority()
    assert judge(stored(attacker), CheckpointTrust.of(authority_set(held))) is Verdict.UNVERIFIABLE


def test_a_checkpoint_whose_certificate_is_not_a_certificate_is_not_believed() -> None:
    signer = authority()
    broken = replace(stored(signer), certificate_der=b"\x30\x03junk")
    assert judge(broken, CheckpointTrust.of(authority_set(signer))) is Verdict.UNVERIFIABLE


def test_a_checkpoint_of_an_authority_issued_by_a_bundle_root_verifies_after_the_authority_is_gone() -> None:
    """With an enterprise upstream, a pruned authority's checkpoints still chain to the root."""
    root_key = generate_private_key(KeyType.EC_P256)
    root = ca_certificate(root_key)
    old_key, new_key = generate_private_key(KeyType.EC_P256), generate_private_key(KeyType.EC_P256)
    old = X509Authority(
        authority_id_for(old_key.public_key()),
        ca_certificate(old_key, (root, root_key)),
        old_key,
        AuthorityState.RETIRED,
        (root,),
    )
    new = X509Authority(
        authority_id_for(new_key.public_key()),
        ca_certificate(new_key, (root, root_key)),
        new_key,
        AuthorityState.ACTIVE,
        (root,),
    )
    assert judge(stored(old), CheckpointTrust.of(authority_set(new))) is Verdict.VERIFIED


def record_of(authority: X509Authority, key_ref: str, kind: AuthorityKind = AuthorityKind.X509) -> AuthorityRecord:
    return AuthorityRecord(
        id=authority.id,
        kind=kind,
        trust_domain=TD,
        state=AuthorityState.ACTIVE,
        key_type=KeyType.EC_P256,
        key_ref=key_ref,
        public_key_der=b"",
        not_before=authority.not_before,
        not_after=authority.not_after,
        created_at=NOW,
        certificate_der=authority.certificate.public_bytes(serialization.Encoding.DER),
    )


def test_checking_a_datastore_alone_trusts_only_authorities_whose_keys_the_key_manager_holds() -> None:
    keys = MemoryKeyManager()
    held_key = keys.generate("x509-held", KeyType.EC_P256)
    held = X509Authority(
        authority_id_for(held_key.public_key()), ca_certificate(held_key), held_key, AuthorityState.ACTIVE
    )
    planted = authority()  # a row someone added, naming a key the CA holds
    trust = CheckpointTrust.of_held_keys(
        [record_of(held, "x509-held"), record_of(planted, "x509-held"), record_of(authority(), "x509-pruned")], keys
    )
    assert [judge(stored(a), trust) for a in (held, planted)] == [Verdict.VERIFIED, Verdict.UNVERIFIABLE]


def test_the_signed_message_names_what_it_is_and_every_field() -> None:
    assert checkpoint_message(NOW, 7, HASH, "a1") == (
        b'{"at":"2030-01-02T03:04:05.000000+00:00","authority_id":"a1","last_hash":"' + HASH.encode() + b'",'
        b'"last_id":7,"what":"trustmesh-audit-checkpoint-v1"}'
    )
