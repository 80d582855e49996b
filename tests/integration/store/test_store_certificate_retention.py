"""Retention of issued-certificate records (ca/retention.py, ``IssuedCertificateRepository.delete_expired``)
on SQLite and PostgreSQL: only records expired longer than the retention go, in bounded batches, and
nothing a CRL or authority pruning still needs. The same runs prune the records of expired x509pop nonces
and join tokens expired longer than the retention ago."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from cryptography import x509

from ca.authority import AuthorityState
from ca.retention import IssuedCertificateRetention, PruneResult
from ca.store import (
    AuthorityRepository,
    Database,
    IssuedCertificate,
    IssuedCertificateRepository,
    JoinTokenRepository,
    hash_join_token,
)
from ca.store.records import JoinTokenQuery
from ca.store.repositories import UsedNonceRepository
from spiffe_core.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.store import NOW, authority

WEB = SpiffeId.parse("spiffe://example.org/web")
RETENTION = timedelta(hours=24)


def certificate(serial: int, expired_ago: timedelta, authority_id: str = "a1") -> IssuedCertificate:
    not_after = NOW - expired_ago
    return IssuedCertificate(
        serial=serial,
        spiffe_id=WEB,
        authority_id=authority_id,
        not_before=not_after - timedelta(hours=1),
        not_after=not_after,
        issued_at=not_after - timedelta(hours=1),
    )


def record(database: Database, *certificates: IssuedCertificate) -> None:
    with database.transaction() as session:
        IssuedCertificateRepository(session).add_many(certificates)


def serials(database: Database) -> list[int]:
    with database.transaction() as session:
        return sorted(c.serial for c in IssuedCertificateRepository(session).list_by_spiffe_id(WEB))


@pytest.fixture
def authorities(database: Database) -> Database:
    with database.transaction() as session:
        AuthorityRepository(session).add(
            authority("a1", state=AuthorityState.ACTIVE, created_at=NOW - timedelta(days=3))
        )
        AuthorityRepository(session).add(authority("a2", created_at=NOW - timedelta(days=3)))
    return database


def test_prunes_only_records_expired_longer_than_the_retention(authorities: Database) -> None:
    record(
        authorities,
        certificate(1, expired_ago=RETENTION + timedelta(seconds=1)),
        certificate(2, expired_ago=timedelta(days=2)),
        certificate(3, expired_ago=RETENTION - timedelta(seconds=1)),  # within the retention: kept
        certificate(4, expired_ago=timedelta(0)),  # expires just now: kept
        certificate(5, expired_ago=-timedelta(minutes=30)),  # live: kept
    )
    result = IssuedCertificateRetention(authorities, RETENTION, FakeClock(NOW)).prune_once()
    assert result == PruneResult(deleted=2, more=False)
    assert serials(authorities) == [3, 4, 5]


def test_keeps_what_crls_and_authority_pruning_need(authorities: Database) -> None:
    revoked_live = certificate(10, expired_ago=-timedelta(hours=1))
    revoked_long_expired = certificate(11, expired_ago=timedelta(days=2))
    record(
        authorities,
        revoked_live,
        revoked_long_expired,
        certificate(12, expired_ago=timedelta(days=2), authority_id="a2"),
        certificate(13, expired_ago=-timedelta(hours=2), authority_id="a2"),
    )
    with authorities.transaction() as session:
        IssuedCertificateRepository(session).mark_revoked(
            [10, 11], NOW - timedelta(days=3), x509.ReasonFlags.unspecified
        )
        before = IssuedCertificateRepository(session).latest_expiry("a2")
    IssuedCertificateRetention(authorities, RETENTION, FakeClock(NOW)).prune_once()
    with authorities.transaction() as session:
        certs = IssuedCertificateRepository(session)
        assert [c.serial for c in certs.revoked_live(NOW)] == [10]  # the CRL lists what it listed
        assert certs.latest_expiry("a2") == before  # the authority's prune time is unchanged
        assert certs.latest_expiry("a1") == revoked_live.not_after


def test_deletes_in_bounded_batches_and_leaves_a_backlog_to_the_next_run(authorities: Database) -> None:
    record(authorities, *(certificate(serial, expired_ago=timedelta(days=2)) for serial in range(1, 26)))
    retention = IssuedCertificateRetention(authorities, RETENTION, FakeClock(NOW), batch_size=10, max_batches=2)
    assert retention.prune_once() == PruneResult(deleted=20, more=True)
    assert len(serials(authorities)) == 5
    assert retention.prune_once() == PruneResult(deleted=5, more=False)
    assert retention.prune_once() == PruneResult(deleted=0, more=False)


def test_repository_deletes_at_most_the_limit(authorities: Database) -> None:
    record(authorities, *(certificate(serial, expired_ago=timedelta(days=2)) for serial in range(1, 6)))
    with authorities.transaction() as session:
        assert IssuedCertificateRepository(session).delete_expired(NOW - RETENTION, 3) == 3
    assert len(serials(authorities)) == 2


async def test_the_periodic_task_logs_one_line_per_run_with_the_count(
    authorities: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    record(authorities, certificate(1, expired_ago=timedelta(days=2)), certificate(2, expired_ago=timedelta(0)))
    runs = 0

    async def stop_after_two_runs(_seconds: float) -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            raise RuntimeError("stop")

    monkeypatch.setattr("ca.retention.asyncio.sleep", stop_after_two_runs)
    with caplog.at_level(logging.INFO, logger="ca.retention"), pytest.raises(RuntimeError, match="stop"):
        await IssuedCertificateRetention(authorities, RETENTION, FakeClock(NOW)).run()
    assert caplog.messages == [
        "pruned 1 issued-certificate records that expired over 1d ago",
        "pruned 0 issued-certificate records that expired over 1d ago",
    ]


def test_a_run_deletes_join_tokens_expired_longer_than_the_retention_only(authorities: Database) -> None:
    expired_at = {
        "long-gone": NOW - RETENTION - timedelta(seconds=1),
        "recent": NOW - RETENTION + timedelta(seconds=1),  # still shown by the inventory
        "live": NOW + timedelta(hours=1),
    }
    with authorities.transaction() as session:
        for token, expires_at in expired_at.items():
            JoinTokenRepository(session).add(hash_join_token(token), expires_at, NOW - timedelta(days=3))

    result = IssuedCertificateRetention(authorities, RETENTION, FakeClock(NOW)).prune_once()

    assert result.join_tokens == 1
    with authorities.transaction() as session:
        left = JoinTokenRepository(session).page(JoinTokenQuery(), limit=10)
    assert {token.token_hash for token in left} == {hash_join_token("recent"), hash_join_token("live")}


def test_a_run_prunes_the_records_of_expired_x509pop_nonces_only(authorities: Database) -> None:
    expired, live = "ab" * 32, "cd" * 32
    with authorities.transaction() as session:
        UsedNonceRepository(session).spend(expired, NOW - timedelta(seconds=1))
        UsedNonceRepository(session).spend(live, NOW + timedelta(seconds=30))
    retention = IssuedCertificateRetention(authorities, RETENTION, FakeClock(NOW))

    assert retention.prune_once() == PruneResult(deleted=0, more=False, nonces=1)

    with authorities.transaction() as session:
        assert UsedNonceRepository(session).spend(live, NOW + timedelta(seconds=30)) is False  # still recorded
        assert UsedNonceRepository(session).spend(expired, NOW - timedelta(seconds=1)) is True  # was pruned
