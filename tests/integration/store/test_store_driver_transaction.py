"""The issuance record's driver transaction (ca.store.driver) on SQLite and PostgreSQL: the same rows,
the same audit chain and the same all-or-nothing as a unit of work through the ORM session."""

from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from ca.authority import AuthorityState
from ca.store import (
    Actor,
    AuditEvent,
    AuditLogRepository,
    AuthorityRepository,
    Database,
    IssuedCertificate,
    IssuedCertificateRepository,
)
from ca.store.records import CertificateQuery
from ca.store.repositories.audit import append_audit
from ca.store.repositories.certificates import record_issued
from spiffe_core.errors import AlreadyExists, UpstreamUnavailable
from spiffe_core.spiffe_id import SpiffeId
from tests.support.store import NOW, authority

AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")


def _certificate(serial: int) -> IssuedCertificate:
    return IssuedCertificate(
        serial=serial,
        spiffe_id=WEB,
        authority_id="a1",
        not_before=NOW,
        not_after=NOW + timedelta(hours=1),
        issued_at=NOW,
        agent_id=AGENT,
    )


def _issued(count: int) -> AuditEvent:
    return AuditEvent(NOW, Actor(str(AGENT), "node-api"), "x509_svid.issue", str(WEB), "ok", {"count": count})


def _record(database: Database, certificates: list[IssuedCertificate], *, then_fail: bool = False) -> None:
    """Record ``certificates`` and their audit record in one driver transaction, then fail if asked."""
    with database.driver_transaction() as transaction:
        append_audit(transaction, _issued(len(certificates)))
        record_issued(transaction, certificates)
        if then_fail:
            raise RuntimeError("signing failed after recording")


@pytest.fixture
def with_authority(database: Database) -> Database:
    with database.transaction() as session:
        AuthorityRepository(session).add(authority("a1", state=AuthorityState.ACTIVE))
    return database


def test_commits_the_certificates_and_their_audit_record_together(with_authority: Database) -> None:
    with with_authority.driver_transaction() as transaction:
        record_issued(transaction, [_certificate(1), _certificate(2)])
        appended = append_audit(transaction, _issued(2))
    with with_authority.transaction() as session:
        assert IssuedCertificateRepository(session).get(2) == _certificate(2)
        assert IssuedCertificateRepository(session).count(CertificateQuery()) == 2
        (stored,) = AuditLogRepository(session).list()
    assert stored == appended


def test_a_failure_inside_leaves_neither_certificates_nor_audit_record(with_authority: Database) -> None:
    with pytest.raises(RuntimeError):
        _record(with_authority, [_certificate(1)], then_fail=True)
    with with_authority.transaction() as session:
        assert IssuedCertificateRepository(session).count(CertificateQuery()) == 0
        assert AuditLogRepository(session).list() == ()


def test_a_recorded_serial_is_refused_and_nothing_of_the_batch_stays(with_authority: Database) -> None:
    with with_authority.driver_transaction() as transaction:
        record_issued(transaction, [_certificate(1)])
    with pytest.raises(AlreadyExists, match="recorded already"):
        _record(with_authority, [_certificate(2), _certificate(1)])
    with with_authority.transaction() as session:
        assert IssuedCertificateRepository(session).count(CertificateQuery()) == 1
        assert AuditLogRepository(session).list() == ()


def test_its_audit_records_chain_with_those_of_orm_units_of_work(with_authority: Database) -> None:
    with with_authority.transaction() as session:
        AuditLogRepository(session).append(_issued(0))
    with with_authority.driver_transaction() as transaction:
        append_audit(transaction, _issued(1))
    with with_authority.transaction() as session:
        AuditLogRepository(session).append(_issued(2))
        check = AuditLogRepository(session).verify_chain()
    assert check.ok
    assert check.records == 3


def test_logs_the_audit_line_only_once_committed(with_authority: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trustmesh.audit")
    with pytest.raises(RuntimeError):
        _record(with_authority, [], then_fail=True)
    with with_authority.driver_transaction() as transaction:
        record = append_audit(transaction, _issued(2))
        assert [r for r in caplog.records if r.name == "trustmesh.audit"] == []  # not before the commit
    (line,) = [r.getMessage() for r in caplog.records if r.name == "trustmesh.audit"]
    assert line.startswith(f"audit #{record.id}: x509_svid.issue ok")


def test_a_database_that_cannot_be_reached_is_reported_unavailable() -> None:
    database = Database.open("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(UpstreamUnavailable) as raised, database.driver_transaction():
        pass
    assert str(raised.value) == "the postgresql datastore did not answer or stayed busy; retry shortly"


def test_holds_the_sqlite_writer_lock_from_its_start(tmp_path: Path) -> None:
    """The chain head it reads cannot be overtaken by another writer before its append commits."""
    database = Database.open(f"sqlite:///{tmp_path / 'ca.db'}")
    database.migrate()
    other = sqlite3.connect(tmp_path / "ca.db", timeout=0, isolation_level=None)
    try:
        with database.driver_transaction(), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free once it ended
        other.execute("ROLLBACK")
    finally:
        other.close()
        database.close()
