"""Audit log chain and bundle sequence on SQLite and PostgreSQL (DESIGN §3 "Admin API", bundle
``spiffe_sequence``)."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import text

from ca.store import (
    Actor,
    AuditEvent,
    AuditLogRepository,
    AuditQuery,
    ChainCheck,
    Database,
    TrustBundleStateRepository,
)
from ca.store.repositories.audit import chain_hash
from spiffe_core.errors import FailedPrecondition, InvalidArgument
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


@pytest.fixture
def varied(database: Database) -> Database:
    """Six records of two actors, three actions and two outcomes, a minute apart."""
    alice, bob = Actor("alice", "oidc", "operator"), Actor("bob", "mtls", "security-officer")
    rows = [
        (alice, "entry.create", "ok"),
        (bob, "authority.prepare", "ok"),
        (bob, "authority.activate", "denied"),
        (alice, "entry.delete", "ok"),
        (bob, "authority.activate", "ok"),
        (alice, "entry.create", "failed"),
    ]
    with database.transaction() as session:
        repository = AuditLogRepository(session)
        for n, (actor, action, outcome) in enumerate(rows, start=1):
            repository.append(AuditEvent(NOW + timedelta(minutes=n), actor, action, f"t{n}", outcome))
    return database


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        pytest.param(AuditQuery(), [1, 2, 3, 4, 5, 6], id="everything"),
        pytest.param(AuditQuery(since=NOW + timedelta(minutes=3)), [3, 4, 5, 6], id="since-inclusive"),
        pytest.param(AuditQuery(until=NOW + timedelta(minutes=2)), [1, 2], id="until-inclusive"),
        pytest.param(AuditQuery(actor="bob"), [2, 3, 5], id="actor"),
        pytest.param(AuditQuery(action="authority."), [2, 3, 5], id="action-prefix"),
        pytest.param(AuditQuery(action="entry.create"), [1, 6], id="action-whole"),
        pytest.param(AuditQuery(action="entry_"), [], id="action-prefix-wildcards-are-literal"),
        pytest.param(AuditQuery(outcome="ok"), [1, 2, 4, 5], id="outcome"),
        pytest.param(AuditQuery(actor="bob", outcome="ok", since=NOW + timedelta(minutes=3)), [5], id="all-at-once"),
    ],
)
def test_list_filters_records(varied: Database, query: AuditQuery, ids: list[int]) -> None:
    with varied.transaction() as session:
        assert [r.id for r in AuditLogRepository(session).list(query)] == ids


def test_list_pages_newest_first_below_an_id(varied: Database) -> None:
    with varied.transaction() as session:
        repository = AuditLogRepository(session)
        assert [r.id for r in repository.list(newest_first=True, limit=2)] == [6, 5]
        assert [r.id for r in repository.list(newest_first=True, before_id=5, limit=2)] == [4, 3]


@pytest.mark.parametrize("limit", [0, 1001])
def test_list_refuses_a_limit_outside_one_to_a_thousand(database: Database, limit: int) -> None:
    with database.transaction() as session, pytest.raises(InvalidArgument, match=r"outside 1\.\.1000"):
        AuditLogRepository(session).list(limit=limit)


def test_overlong_texts_are_recorded_cut_to_their_columns(database: Database) -> None:
    event = AuditEvent(NOW, Actor("o" * 3000, "m" * 40, "r" * 70), "a" * 200, "t" * 3000, "denied", {}, "why " * 400)
    with database.transaction() as session:
        recorded = AuditLogRepository(session).append(event)
    with database.transaction() as session:
        (stored,) = AuditLogRepository(session).list()
        assert AuditLogRepository(session).verify_chain().ok
    assert stored.event == recorded.event
    actor, texts = stored.event.actor, (stored.event.action, stored.event.target, stored.event.reason)
    assert [len(text) for text in (actor.name, actor.method, actor.role, *texts)] == [2048, 32, 64, 128, 2048, 1024]
    assert stored.event.reason.endswith("…")


def test_an_intact_chain_verifies_up_to_its_head(audited: Database) -> None:
    with audited.transaction() as session:
        repository = AuditLogRepository(session)
        head = repository.head()
        assert repository.verify_chain() == ChainCheck(True, None, "", 4, 4, head[1] if head else None)


def test_an_empty_log_verifies_with_no_head(database: Database) -> None:
    with database.transaction() as session:
        assert AuditLogRepository(session).verify_chain() == ChainCheck(ok=True, first_bad_id=None)


def test_a_walk_continues_from_where_a_limited_one_stopped(audited: Database) -> None:
    with audited.transaction() as session:
        repository = AuditLogRepository(session)
        first = repository.verify_chain(limit=3)
        rest = repository.verify_chain(first, limit=3)
        assert (first.records, first.last_id) == (3, 3)
        assert rest == repository.verify_chain()


def _rehash(database: Database, record_id: int, target: str) -> None:
    """What someone with write access who knows the hashing does: edit a record and recompute its hash."""
    with database.transaction() as session:
        record = next(r for r in AuditLogRepository(session).list() if r.id == record_id)
        edited = chain_hash(record.prev_hash, replace(record.event, target=target))
        session.execute(
            text("UPDATE audit_log SET target = :target, hash = :hash WHERE id = :id"),
            {"target": target, "hash": edited, "id": record_id},
        )


SWAP_2_AND_3 = (
    "UPDATE audit_log SET id = 1000 WHERE id = 2",
    "UPDATE audit_log SET id = 2 WHERE id = 3",
    "UPDATE audit_log SET id = 3 WHERE id = 1000",
)


@pytest.mark.parametrize(
    ("statements", "first_bad_id", "problem"),
    [
        pytest.param(
            ("UPDATE audit_log SET outcome = 'denied' WHERE id = 3",),
            3,
            "record 3 was edited (its hash does not match its contents)",
            id="edited-outcome",
        ),
        pytest.param(
            ("UPDATE audit_log SET actor = 'mallory' WHERE id = 3",),
            3,
            "record 3 was edited (its hash does not match its contents)",
            id="edited-actor",
        ),
        pytest.param(
            ("UPDATE audit_log SET reason = 'why not' WHERE id = 3",),
            3,
            "record 3 was edited (its hash does not match its contents)",
            id="edited-reason",
        ),
        pytest.param(
            ("DELETE FROM audit_log WHERE id = 3",),
            4,
            "record 4 does not follow record 2: record 3 was deleted",
            id="deleted-one",
        ),
        pytest.param(
            ("DELETE FROM audit_log WHERE id IN (2, 3)",),
            4,
            "record 4 does not follow record 1: records 2 to 3 were deleted",
            id="deleted-two",
        ),
        pytest.param(
            ("DELETE FROM audit_log WHERE id = 1",),
            2,
            "record 2 does not follow the start of the log: record 1 was deleted",
            id="deleted-the-first",
        ),
        pytest.param(
            SWAP_2_AND_3,
            2,
            "records 2 and 3 are out of order (record 3 is the one that follows record 1)",
            id="reordered",
        ),
        pytest.param(
            ("DELETE FROM audit_log WHERE id = 3", "UPDATE audit_log SET id = 3 WHERE id = 4"),
            3,
            "record 3 does not follow record 2: a record between them was deleted (and the rest renumbered), or "
            "record 2 was edited and its hash recomputed",
            id="deleted-and-renumbered",
        ),
    ],
)
def test_verify_names_the_first_tampered_record_and_what_was_done(
    audited: Database, statements: tuple[str, ...], first_bad_id: int, problem: str
) -> None:
    with audited.transaction() as session:
        for statement in statements:
            session.execute(text(statement))
    with audited.transaction() as session:
        check = AuditLogRepository(session).verify_chain()
    assert (check.ok, check.first_bad_id, check.problem) == (False, first_bad_id, problem)


def test_a_log_whose_newest_records_were_swapped_refuses_appends_saying_why(audited: Database) -> None:
    with audited.transaction() as session:
        for statement in (
            "UPDATE audit_log SET id = 1000 WHERE id = 3",
            "UPDATE audit_log SET id = 3 WHERE id = 4",
            "UPDATE audit_log SET id = 4 WHERE id = 1000",
        ):
            session.execute(text(statement))
    with pytest.raises(FailedPrecondition) as raised, audited.transaction() as session:
        AuditLogRepository(session).append(_event(9))
    assert str(raised.value) == (
        "the audit log cannot be appended to: its newest record is already followed by another, so records were "
        "moved; nothing audited can be done until it is restored. Run `trustmesh-ca audit verify` to see where"
    )


def test_an_edit_with_a_recomputed_hash_is_found_at_the_next_record(audited: Database) -> None:
    _rehash(audited, 2, "entry-x")
    with audited.transaction() as session:
        check = AuditLogRepository(session).verify_chain()
    assert (check.first_bad_id, check.problem) == (
        3,
        "record 3 does not follow record 2: a record between them was deleted (and the rest renumbered), or "
        "record 2 was edited and its hash recomputed",
    )


def test_records_cut_off_the_end_leave_an_intact_shorter_chain(audited: Database) -> None:
    """The chain alone cannot tell: that is what signed checkpoints are for (tests/integration/ca)."""
    with audited.transaction() as session:
        session.execute(text("DELETE FROM audit_log WHERE id > 2"))
    with audited.transaction() as session:
        check = AuditLogRepository(session).verify_chain()
    assert (check.ok, check.records, check.last_id) == (True, 2, 2)


def test_hashes_of_answers_the_records_that_exist(audited: Database) -> None:
    with audited.transaction() as session:
        repository = AuditLogRepository(session)
        records = {r.id: r.hash for r in repository.list()}
        assert repository.hashes_of([2, 4, 99]) == {2: records[2], 4: records[4]}


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
        check = repository.verify_chain()
        assert (check.ok, check.records) == (True, 15)
