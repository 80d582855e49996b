"""The auditor's HTTP edge (ca/http_audit.py) on the real admin app over a fake AuditOps: query
parameters into queries, records and verification results into JSON, the export as JSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ca.audit_log import AuditVerification
from ca.http_api import create_admin_app
from ca.store.records import Actor, AuditCheckpoint, AuditEvent, AuditQuery, AuditRecord
from spiffe_core.errors import UpstreamUnavailable
from tests.support.admin import LocalAdmin, RecordedAudit
from tests.support.clock import FakeClock

NOW = datetime(2030, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)
UNUSED: Any = object()
RECORD = AuditRecord(
    id=7,
    event=AuditEvent(
        NOW,
        Actor("spiffe://example.org/admin/alice", "mtls", "security-officer"),
        "authority.taint",
        "abc123",
        "denied",
        {"dry_run": True},
        "authority abc123 is active",
    ),
    prev_hash="1" * 64,
    hash="2" * 64,
)
DOCUMENT = {
    "id": 7,
    "at": "2030-01-02T03:04:05.600000+00:00",
    "actor": "spiffe://example.org/admin/alice",
    "auth_method": "mtls",
    "role": "security-officer",
    "action": "authority.taint",
    "target": "abc123",
    "outcome": "denied",
    "reason": "authority abc123 is active",
    "detail": {"dry_run": True},
    "prev_hash": "1" * 64,
    "hash": "2" * 64,
}


@dataclass
class FakeAudit:
    calls: list[tuple[str, Any]] = field(default_factory=list)
    verification: AuditVerification | None = None
    error: Exception | None = None

    def list(
        self,
        query: AuditQuery,
        *,
        after_id: int = 0,
        before_id: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
    ) -> tuple[AuditRecord, ...]:
        self.calls.append(("list", (query, after_id, before_id, newest_first, limit)))
        return (RECORD,)

    def export(self, query: AuditQuery) -> Iterator[AuditRecord]:
        self.calls.append(("export", query))
        if self.error is not None:
            raise self.error
        yield RECORD
        yield RECORD

    def verify(self) -> AuditVerification:
        assert self.verification is not None
        return self.verification


@pytest.fixture
def audit() -> FakeAudit:
    return FakeAudit()


@pytest.fixture
def admin(audit: FakeAudit) -> TestClient:
    app = create_admin_app(
        UNUSED,
        CollectorRegistry(),
        entries=UNUSED,
        join_tokens=UNUSED,
        authenticator=LocalAdmin(),
        audit=RecordedAudit(),
        clock=FakeClock(NOW),
        audit_log=audit,
    )
    return TestClient(app, raise_server_exceptions=False)


def test_list_encodes_each_record_with_its_place_in_the_chain(admin: TestClient) -> None:
    assert admin.get("/v1/audit").json() == {"records": [DOCUMENT]}


def test_list_passes_the_filters_and_the_page(admin: TestClient, audit: FakeAudit) -> None:
    reply = admin.get(
        "/v1/audit",
        params={
            "since": "2030-01-02T00:00:00Z",
            "until": "2030-01-02T05:00:00+02:00",
            "actor": "alice",
            "action": "authority.",
            "outcome": "denied",
            "before_id": "90",
            "newest_first": "true",
            "limit": "20",
        },
    )
    assert reply.status_code == 200
    query = AuditQuery(
        datetime(2030, 1, 2, tzinfo=UTC), datetime(2030, 1, 2, 3, tzinfo=UTC), "alice", "authority.", "denied"
    )
    assert audit.calls == [("list", (query, 0, 90, True, 20))]


def test_list_without_parameters_asks_for_the_first_hundred(admin: TestClient, audit: FakeAudit) -> None:
    admin.get("/v1/audit")
    assert audit.calls == [("list", (AuditQuery(), 0, None, False, 100))]


def test_a_time_without_a_zone_is_400_saying_how_to_write_it(admin: TestClient) -> None:
    reply = admin.get("/v1/audit", params={"since": "2030-01-02T00:00:00"})
    assert (reply.status_code, reply.json()) == (
        400,
        {"error": "since 2030-01-02T00:00:00 has no time zone; write e.g. 2026-11-22T12:00:00Z"},
    )


def test_an_unknown_query_parameter_is_400(admin: TestClient, audit: FakeAudit) -> None:
    reply = admin.get("/v1/audit", params={"actr": "alice"})
    assert (reply.status_code, audit.calls) == (400, [])


def test_verify_encodes_the_result_with_its_summary(admin: TestClient, audit: FakeAudit) -> None:
    checkpoint = AuditCheckpoint(3, NOW, 7, "2" * 64, "abc123", b"", b"")
    audit.verification = AuditVerification(True, "", None, 7, 7, 3, 1, checkpoint, timedelta(seconds=42), ("a note",))
    assert admin.get("/v1/audit/verify").json() == {
        "ok": True,
        "summary": audit.verification.summary,
        "problem": "",
        "first_bad_id": None,
        "records": 7,
        "last_id": 7,
        "checkpoints": 3,
        "unverifiable_checkpoints": 1,
        "newest_checkpoint": {"id": 3, "at": "2030-01-02T03:04:05.600000Z", "last_id": 7, "authority_id": "abc123"},
        "newest_checkpoint_age_seconds": 42,
        "notes": ["a note"],
    }


def test_a_failed_verify_names_the_problem_as_its_summary(admin: TestClient, audit: FakeAudit) -> None:
    problem = "record 17 was edited (its hash does not match its contents)"
    audit.verification = AuditVerification(False, problem, 17, 16, None, 0, 0, None, None)
    reply = admin.get("/v1/audit/verify").json()
    assert (reply["ok"], reply["summary"], reply["first_bad_id"]) == (False, problem, 17)


def test_export_streams_one_json_line_per_record(admin: TestClient, audit: FakeAudit) -> None:
    reply = admin.get("/v1/audit/export", params={"action": "authority."})
    assert reply.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in reply.text.splitlines()] == [DOCUMENT, DOCUMENT]
    assert audit.calls == [("export", AuditQuery(action="authority."))]


def test_export_of_an_unreachable_datastore_is_503_not_a_cut_stream(admin: TestClient, audit: FakeAudit) -> None:
    audit.error = UpstreamUnavailable("the sqlite datastore did not answer or stayed busy; retry shortly")
    reply = admin.get("/v1/audit/export")
    assert (reply.status_code, reply.json()["error"]) == (503, str(audit.error))
