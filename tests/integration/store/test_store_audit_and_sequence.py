"""Audit log chain and bundle sequence on SQLite and PostgreSQL (DESIGN §3 "Admin API", bundle
``spiffe_sequence``)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

from ca.store import Actor, AuditEvent, AuditLogRepository, ChainCheck, Database, TrustBundleStateRepository
from spiffe_core.spiffe_id import TrustDomain
from tests.support.store import NOW, TRUST_DOMAIN


def _event(n: int) -> AuditEvent:
    return AuditEvent(
        at=NOW + timedelta(seconds=n),
        actor=Actor("spiffe://example.org/admin/alice", "mtls", "operator"),
        action="entry.create",
        target=f"entry-{n}",
        outcome="ok",
        detail={"selectors": ["unix:uid:1000"], "n": n, "ratio": 0.5},
    )


@pytest.fixture
def audited(database: Database) -> Database:
    with database.transaction() as session:
        repository = AuditLogRepository(session)
        for n in range(1, 5):
            repository.append(_event(n))
    return database


def test_appended_events_chain_from_the_genesis_hash(audited: Database) -> None:
    with audited.transaction() as session:
        records = AuditLogRepository(session).list()
    assert [r.id for r in records] == [1, 2, 3, 4]
    assert [r.event for r in records] == [_event(n) for n in range(1, 5)]
    assert records[0].prev_hash == "0" * 64
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]


def test_lists_a_page_after_an_id(audited: Database) -> None:
    with audited.transaction() as session:
        assert [r.id for r in AuditLogRepository(session).list(after_id=1, limit=2)] == [2, 3]


def test_an_intact_chain_verifies(audited: Database) -> None:
    with audited.transaction() as session:
        assert AuditLogRepository(session).verify_chain() == ChainCheck(ok=True, first_bad_id=None)


@pytest.mark.parametrize(
    "tampering",
    [
        pytest.param("UPDATE audit_log SET outcome = 'denied' WHERE id = 3", id="edited-outcome"),
        pytest.param("UPDATE audit_log SET target = 'entry-x' WHERE id = 3", id="edited-target"),
        pytest.param("DELETE FROM audit_log WHERE id = 2", id="deleted-row"),
    ],
)
def test_verify_reports_the_first_tampered_row(audited: Database, tampering: str) -> None:
    with audited.transaction() as session:
        session.execute(text(tampering))
    with audited.transaction() as session:
        assert AuditLogRepository(session).verify_chain() == ChainCheck(ok=False, first_bad_id=3)


def test_bundle_sequence_starts_at_one_and_grows_by_one(database: Database) -> None:
    with database.transaction() as session:
        repository = TrustBundleStateRepository(session)
        assert repository.current_bundle_sequence(TRUST_DOMAIN) == 0
        assert [repository.next_bundle_sequence(TRUST_DOMAIN) for _ in range(3)] == [1, 2, 3]
    with database.transaction() as session:
        assert TrustBundleStateRepository(session).current_bundle_sequence(TRUST_DOMAIN) == 3


def test_bundle_sequences_of_trust_domains_are_independent(database: Database) -> None:
    other = TrustDomain("partner.example")
    with database.transaction() as session:
        repository = TrustBundleStateRepository(session)
        repository.next_bundle_sequence(TRUST_DOMAIN)
        repository.next_bundle_sequence(TRUST_DOMAIN)
        assert repository.next_bundle_sequence(other) == 1


def test_concurrent_bundle_sequence_increments_never_repeat(database: Database) -> None:
    seen: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def bump() -> None:
        try:
            for _ in range(10):
                with database.transaction() as session:
                    value = TrustBundleStateRepository(session).next_bundle_sequence(TRUST_DOMAIN)
                with lock:
                    seen.append(value)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=bump) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(seen) == list(range(1, 31))


def test_concurrent_appends_keep_one_unbroken_chain(database: Database) -> None:
    errors: list[BaseException] = []

    def append_five(worker: int) -> None:
        try:
            for n in range(5):
                with database.transaction() as session:
                    AuditLogRepository(session).append(_event(worker * 10 + n))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=append_five, args=(worker,)) for worker in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    with database.transaction() as session:
        repository = AuditLogRepository(session)
        assert len(repository.list(limit=100)) == 15
        assert repository.verify_chain() == ChainCheck(ok=True, first_bad_id=None)
