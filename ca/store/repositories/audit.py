"""The append-only, hash-chained audit log (DESIGN §3 "Admin API": every mutation is audited).

Each row's ``hash`` is SHA-256 over the previous row's hash and the canonical JSON of its own event, so
editing, inserting or deleting a row in the middle breaks the chain at that row, which
:meth:`AuditLogRepository.verify_chain` reports. (Cutting rows off the end is only detectable against
a copy of the last hash kept elsewhere.) Appends are serialized across CA replicas, so the chain never
forks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC

from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.store.engine import lock_for_writers
from ca.store.models import AUDIT_REASON_LENGTH, AuditRow
from ca.store.records import Actor, AuditEvent, AuditRecord, ChainCheck

GENESIS_HASH = "0" * 64
_VERIFY_BATCH = 500


def chain_hash(prev_hash: str, event: AuditEvent) -> str:
    """The hash of a row holding ``event`` after a row whose hash is ``prev_hash``.

    The fields added in migration 0003 (auth method, role, reason) enter the canonical form only when
    they are not empty, so rows written before them keep their hashes."""
    fields: dict[str, object] = {
        "at": event.at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": event.actor.name,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "detail": event.detail,
    }
    optional = {"auth_method": event.actor.method, "role": event.actor.role, "reason": event.reason}
    fields.update((key, value) for key, value in optional.items() if value)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _event(row: AuditRow) -> AuditEvent:
    return AuditEvent(
        at=row.at,
        actor=Actor(row.actor, row.auth_method, row.role),
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        detail=row.detail,
        reason=row.reason,
    )


class AuditLogRepository:
    """The audit log, within the caller's unit of work (so an audited change and its audit row commit
    or roll back together)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def append(self, event: AuditEvent) -> AuditRecord:
        lock_for_writers(self._session, "audit-log")
        last = self._session.scalars(select(AuditRow.hash).order_by(AuditRow.id.desc()).limit(1)).first()
        prev_hash = GENESIS_HASH if last is None else last
        if len(event.reason) > AUDIT_REASON_LENGTH:
            event = replace(event, reason=event.reason[: AUDIT_REASON_LENGTH - 1] + "…")
        row = AuditRow(
            at=event.at,
            actor=event.actor.name,
            auth_method=event.actor.method,
            role=event.actor.role,
            action=event.action,
            target=event.target,
            outcome=event.outcome,
            reason=event.reason,
            detail=dict(event.detail),
            prev_hash=prev_hash,
            hash=chain_hash(prev_hash, event),
        )
        self._session.add(row)
        self._session.flush()
        return AuditRecord(id=row.id, event=event, prev_hash=row.prev_hash, hash=row.hash)

    def list(self, after_id: int = 0, limit: int = 100) -> tuple[AuditRecord, ...]:
        """Up to ``limit`` records with IDs above ``after_id``, oldest first (page with the last ID)."""
        query = select(AuditRow).where(AuditRow.id > after_id).order_by(AuditRow.id).limit(limit)
        return tuple(
            AuditRecord(id=row.id, event=_event(row), prev_hash=row.prev_hash, hash=row.hash)
            for row in self._session.scalars(query)
        )

    def verify_chain(self) -> ChainCheck:
        """Walk the whole log in ID order and report the first row that does not follow from the one
        before it. Reads in batches, so memory does not grow with the log."""
        expected_prev, after_id = GENESIS_HASH, 0
        while True:
            rows = self._session.scalars(
                select(AuditRow)
                .where(AuditRow.id > after_id)
                .order_by(AuditRow.id)
                .limit(_VERIFY_BATCH)
                .execution_options(populate_existing=True)
            ).all()
            for row in rows:
                if row.prev_hash != expected_prev or chain_hash(row.prev_hash, _event(row)) != row.hash:
                    return ChainCheck(ok=False, first_bad_id=row.id)
                expected_prev = row.hash
            if len(rows) < _VERIFY_BATCH:
                return ChainCheck(ok=True, first_bad_id=None)
            after_id = rows[-1].id
