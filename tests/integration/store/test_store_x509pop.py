"""The datastore's part in stateless x509pop (migration 0007): a shared secret is created once and then
only read, and a used nonce is recorded once (a second spend says so) until it expires and is pruned.
Run on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ca.store import Database
from ca.store.repositories import SharedSecretRepository, UsedNonceRepository
from spiffe_core.errors import InvalidArgument

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DIGEST = "ab" * 32
OTHER = "cd" * 32


def test_a_shared_secret_is_created_by_the_first_caller_and_kept(database: Database) -> None:
    with database.transaction() as session:
        first = SharedSecretRepository(session).get_or_create("key", lambda: b"\x01" * 32, NOW)
    with database.transaction() as session:
        again = SharedSecretRepository(session).get_or_create("key", lambda: b"\x02" * 32, NOW)

    assert first == again == b"\x01" * 32


def test_a_nonce_is_spent_once(database: Database) -> None:
    with database.transaction() as session:
        assert UsedNonceRepository(session).spend(DIGEST, NOW + timedelta(minutes=1)) is True
    with database.transaction() as session:
        assert UsedNonceRepository(session).spend(DIGEST, NOW + timedelta(minutes=1)) is False
        assert UsedNonceRepository(session).spend(OTHER, NOW + timedelta(minutes=1)) is True


def test_only_expired_nonces_are_pruned_and_a_pruned_one_could_be_recorded_again(database: Database) -> None:
    with database.transaction() as session:
        nonces = UsedNonceRepository(session)
        nonces.spend(DIGEST, NOW)
        nonces.spend(OTHER, NOW + timedelta(seconds=1))
    with database.transaction() as session:
        assert UsedNonceRepository(session).delete_expired(NOW) == 1
    with database.transaction() as session:
        assert UsedNonceRepository(session).spend(OTHER, NOW + timedelta(seconds=1)) is False
        assert UsedNonceRepository(session).spend(DIGEST, NOW) is True


def test_a_digest_that_is_not_sha256_hex_is_refused(database: Database) -> None:
    with database.transaction() as session, pytest.raises(InvalidArgument, match="used_digest"):
        UsedNonceRepository(session).spend("not-a-digest", NOW)
