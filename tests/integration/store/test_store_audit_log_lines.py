"""Every committed audit record is also one line of the process log (issue 11 "Logs"); a rolled-back
one is not, so the log never claims what the datastore does not hold."""

from __future__ import annotations

import logging

import pytest

from ca.store import Actor, AuditEvent, AuditLogRepository, Database
from tests.support.store import NOW

AGENT = "spiffe://example.org/trustmesh/agent/join_token/node-1"


def _attested() -> AuditEvent:
    return AuditEvent(
        NOW, Actor("attestation:10.0.0.7", "attestation"), "agent.attest", AGENT, "ok", {"method": "join_token"}
    )


def _refused() -> AuditEvent:
    return AuditEvent(
        NOW,
        Actor(AGENT, "node-api"),
        "x509_svid.issue",
        "2 X509-SVIDs",
        "denied",
        {"refused": 2},
        "entry e1 is not parented to the agent",
    )


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trustmesh.audit"]


def test_a_committed_record_is_logged_once_with_its_fields(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustmesh.audit")
    with database.transaction() as session:
        record = AuditLogRepository(session).append(_attested())
        assert _audit_lines(caplog) == [], "nothing is logged before the commit"
    (line,) = _audit_lines(caplog)
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        f'audit #{record.id}: agent.attest ok by attestation:10.0.0.7 on {AGENT} {{"method":"join_token"}}'
    )
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["action"] == "agent.attest"
    assert fields["target"] == AGENT
    assert fields["detail"] == {"method": "join_token"}


def test_a_refusal_is_logged_as_a_warning_with_its_reason(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trustmesh.audit")
    with database.transaction() as session:
        AuditLogRepository(session).append(_refused())
    (line,) = _audit_lines(caplog)
    assert line.levelno == logging.WARNING
    assert "x509_svid.issue denied by " + AGENT in line.getMessage()
    assert ": entry e1 is not parented to the agent" in line.getMessage()


def test_a_rolled_back_record_is_not_logged(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trustmesh.audit")

    def failing_change() -> None:
        with database.transaction() as session:
            AuditLogRepository(session).append(_attested())
            raise RuntimeError("the audited change failed")

    with pytest.raises(RuntimeError):
        failing_change()
    assert _audit_lines(caplog) == []


def test_each_record_of_a_unit_of_work_gets_its_own_line(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trustmesh.audit")
    with database.transaction() as session:
        repository = AuditLogRepository(session)
        repository.append(_attested())
        repository.append(_refused())
    assert [r.fields["action"] for r in _audit_lines(caplog)] == ["agent.attest", "x509_svid.issue"]  # type: ignore[attr-defined]
