"""Authorities on a real datastore (SQLite and PostgreSQL): first start creates them, later starts and
other replicas load the same ones, and the bundle sequence only grows."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from ca.authority import AuthorityState
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.keys.memory import MemoryKeyManager
from ca.store import Database
from ca.store.records import AuthorityKind
from ca.store.repositories import AuthorityRepository
from ca.upstream import SelfSignedUpstream
from spiffe_core.clock import SystemClock
from spiffe_core.errors import FailedPrecondition
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import validate_signing_cert
from tests.support.clock import FakeClock

TD = TrustDomain("example.org")
PARAMS = AuthorityParams(TD, KeyType.EC_P256, KeyType.EC_P256, timedelta(days=7), timedelta(minutes=5))


def manager(database: Database, keys: MemoryKeyManager) -> AuthorityManager:
    return AuthorityManager(database, keys, SelfSignedUpstream(), PARAMS, SystemClock())


def test_first_load_creates_one_active_x509_authority_and_one_jwt_key(database: Database) -> None:
    current = manager(database, MemoryKeyManager()).load()
    assert current.active_x509().state is AuthorityState.ACTIVE
    assert validate_signing_cert(current.active_x509().certificate) == TD
    assert len(current.bundle.x509_authorities) == 1
    assert [a.key_id for a in current.bundle.jwt_authorities] == [current.active_jwt().key_id]


def test_a_second_load_reuses_the_stored_authorities(database: Database) -> None:
    keys = MemoryKeyManager()
    first = manager(database, keys).load()
    second = manager(database, keys).load()
    assert second.active_x509().id == first.active_x509().id
    assert second.active_jwt().key_id == first.active_jwt().key_id
    assert second.bundle.sequence > first.bundle.sequence


def test_replicas_starting_together_create_exactly_one_authority_of_each_kind(database: Database) -> None:
    keys = MemoryKeyManager()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            manager(database, keys).load()
        except BaseException as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    with database.transaction() as session:
        records = AuthorityRepository(session).list()
    assert sorted(r.kind for r in records) == [AuthorityKind.JWT, AuthorityKind.X509]


def test_the_authority_id_is_the_ca_certificates_subject_key_identifier(database: Database) -> None:
    authority = manager(database, MemoryKeyManager()).load().active_x509()
    ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski.digest.hex() == authority.id


def test_start_up_deletes_old_keys_no_authority_names_and_keeps_fresh_ones(database: Database) -> None:
    keys = MemoryKeyManager()
    manager(database, keys).load()
    keys.generate("x509-orphan", KeyType.EC_P256)  # a CA killed after writing the key, before its commit
    later = FakeClock(datetime.now(UTC) + timedelta(minutes=11))
    AuthorityManager(database, keys, SelfSignedUpstream(), PARAMS, later).load()
    keys.generate("x509-being-created", KeyType.EC_P256)  # another replica's, not committed yet
    AuthorityManager(database, keys, SelfSignedUpstream(), PARAMS, FakeClock(datetime.now(UTC))).load()
    held = {key_id for key_id, _ in keys.list()}
    assert "x509-orphan" not in held
    assert "x509-being-created" in held
    assert len(held) == 3  # and the two authorities' keys


def test_empty_datastore_beside_authority_keys_is_refused_and_nothing_is_created(database: Database) -> None:
    keys = MemoryKeyManager()
    keys.generate("x509-0a1b", KeyType.EC_P256)
    keys.generate("jwt-2c3d", KeyType.EC_P256)
    with pytest.raises(FailedPrecondition) as refused:
        manager(database, keys).load()
    assert str(refused.value).startswith(
        "the datastore holds no authorities of example.org, but the key manager holds 2 authority keys "
        "(jwt-2c3d, x509-0a1b): the datastore was lost or replaced. Restore it from a backup; or, to start a new "
        "trust domain root on purpose"
    )
    assert "--new-trust-domain-root" in str(refused.value)
    assert {key_id for key_id, _ in keys.list()} == {"x509-0a1b", "jwt-2c3d"}
    with database.transaction() as session:
        assert not AuthorityRepository(session).list()


def test_a_new_root_beside_old_keys_is_created_when_asked_for(database: Database) -> None:
    keys = MemoryKeyManager()
    keys.generate("x509-0a1b", KeyType.EC_P256)
    params = dataclasses.replace(PARAMS, new_root=True)
    current = AuthorityManager(database, keys, SelfSignedUpstream(), params, SystemClock()).load()
    assert current.active_x509().state is AuthorityState.ACTIVE
