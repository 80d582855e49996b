"""The auditor's HTTP edge (issue 8): list, verify and export the audit log. Registered by
:func:`ca.http_api.create_admin_app`; the RBAC layer lets the ``auditor`` and ``security-officer``
roles read these three paths.

* ``GET /v1/audit`` — one page of records matching the query (``since``/``until`` ISO 8601 times with a
  zone, ``actor`` exact, ``action`` prefix, ``outcome``), oldest first from ``after_id`` or, with
  ``newest_first``, newest first below ``before_id``; ``limit`` at most 1000.
* ``GET /v1/audit/verify`` — the chain and checkpoint check, with its one-line summary.
* ``GET /v1/audit/export`` — every matching record as JSON lines (``application/x-ndjson``), streamed a
  page at a time, with ``id``, ``prev_hash`` and ``hash`` so a SIEM can verify the chain itself
  (docs/audit.md says how).

Each route decodes, calls one method of :class:`AuditOps` (:class:`ca.audit_log.AuditLog`), encodes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ca.audit_log import AuditVerification
from ca.store.records import AuditQuery, AuditRecord
from spiffe_core.errors import InvalidArgument

NDJSON = "application/x-ndjson"


class AuditOps(Protocol):
    """The auditor's use cases (:class:`ca.audit_log.AuditLog`)."""

    def list(
        self,
        query: AuditQuery,
        *,
        after_id: int = 0,
        before_id: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
    ) -> tuple[AuditRecord, ...]: ...
    def export(self, query: AuditQuery) -> Iterator[AuditRecord]: ...
    def verify(self) -> AuditVerification: ...


def record_document(record: AuditRecord) -> dict[str, Any]:
    """A record as the API and the export give it. ``at`` is written exactly as the hash covers it."""
    event = record.event
    return {
        "id": record.id,
        "at": event.at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": event.actor.name,
        "auth_method": event.actor.method,
        "role": event.actor.role,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "reason": event.reason,
        "detail": dict(event.detail),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


class AuditListReply(BaseModel):
    records: list[dict[str, Any]]


class CheckpointReply(BaseModel):
    id: int
    at: datetime
    last_id: int
    authority_id: str


class VerifyReply(BaseModel):
    ok: bool
    summary: str = Field(description="one line: the first problem, or what verified")
    problem: str
    first_bad_id: int | None
    records: int
    last_id: int | None
    checkpoints: int = Field(description="checkpoints whose signature and record verified")
    unverifiable_checkpoints: int = Field(description="signed by authorities this CA no longer holds")
    newest_checkpoint: CheckpointReply | None
    newest_checkpoint_age_seconds: int | None
    notes: list[str]


class AuditFilter(BaseModel):
    """The query parameters that choose records (every one given must match)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    since: datetime | None = Field(default=None, description="ISO 8601 with a zone; inclusive")
    until: datetime | None = Field(default=None, description="ISO 8601 with a zone; inclusive")
    actor: str | None = Field(default=None, description="exactly this actor")
    action: str | None = Field(default=None, description="actions starting with this")
    outcome: str | None = Field(default=None, description="ok, denied or failed")

    def query(self) -> AuditQuery:
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None and value.utcoffset() is None:
                raise InvalidArgument(f"{name} {value.isoformat()} has no time zone; write e.g. 2026-11-22T12:00:00Z")
        return AuditQuery(self.since, self.until, self.actor or None, self.action or None, self.outcome or None)


class AuditPage(AuditFilter):
    """The query parameters of ``GET /v1/audit``: the filter and where the page starts."""

    after_id: int = Field(default=0, description="oldest first, records after this ID")
    before_id: int | None = Field(default=None, description="records before this ID (page on newest first)")
    newest_first: bool = False
    limit: int = Field(default=100, description="at most 1000")


def verify_reply(result: AuditVerification) -> VerifyReply:
    newest = result.newest
    return VerifyReply(
        ok=result.ok,
        summary=result.summary,
        problem=result.problem,
        first_bad_id=result.first_bad_id,
        records=result.records,
        last_id=result.last_id,
        checkpoints=result.checkpoints,
        unverifiable_checkpoints=result.unverifiable,
        newest_checkpoint=None
        if newest is None
        else CheckpointReply(id=newest.id, at=newest.at, last_id=newest.last_id, authority_id=newest.authority_id),
        newest_checkpoint_age_seconds=None if result.newest_age is None else int(result.newest_age.total_seconds()),
        notes=list(result.notes),
    )


def add_audit_routes(app: FastAPI, audit: AuditOps) -> None:
    """``GET /v1/audit``, ``/v1/audit/verify`` and ``/v1/audit/export``; errors are left to the app's
    TrustmeshError handler."""

    @app.get("/v1/audit")
    def list_audit(page: Annotated[AuditPage, Query()]) -> AuditListReply:
        records = audit.list(
            page.query(),
            after_id=page.after_id,
            before_id=page.before_id,
            newest_first=page.newest_first,
            limit=page.limit,
        )
        return AuditListReply(records=[record_document(record) for record in records])

    @app.get("/v1/audit/verify")
    def verify_audit() -> VerifyReply:
        return verify_reply(audit.verify())

    @app.get("/v1/audit/export")
    def export_audit(chosen: Annotated[AuditFilter, Query()]) -> StreamingResponse:
        records = audit.export(chosen.query())
        first = next(records, None)  # read here, so a datastore that is down is a 503, not a cut stream
        every = itertools.chain(() if first is None else (first,), records)
        lines = (json.dumps(record_document(record), ensure_ascii=False) + "\n" for record in every)
        return StreamingResponse(lines, media_type=NDJSON)
