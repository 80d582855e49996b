"""The append-only, hash-chained audit log (DESIGN §3 "Admin API": every mutation is audited).

Each row's ``hash`` is SHA-256 over the previous row's hash and the canonical JSON of its own event, so
editing, inserting, deleting or reordering rows breaks the chain at the first row touched, which
:meth:`AuditLogRepository.verify_chain` names and explains. Cutting rows off the end leaves an intact
chain; the signed checkpoints of :mod:`ca.audit_checkpoints` catch that. Appends are serialized across CA
replicas, so the chain never forks.

IDs grow with every append but may have gaps on PostgreSQL (a rolled-back transaction consumes its
sequence number); only the hash links say whether a record is missing.

Every record is also written to the process log once its transaction commits (issue 11 "Logs"): one
line per attestation, issuance batch, rotation step, revocation, refusal and every other audited
action, on the logger :data:`AUDIT_LOGGER` (INFO for ``ok``, WARNING otherwise), with the record's
fields as structured ``fields`` for the JSON log format. A rolled-back change (a dry run, a failure)
logs nothing, so the log never claims what the datastore does not hold. Records hold no secrets (see
:mod:`ca.audit`), so neither do these lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC

from sqlalchemy import Select, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.store._integrity import Violation, violation_of
from ca.store.driver import DriverStatement, DriverTransaction
from ca.store.engine import lock_for_writers
from ca.store.models import (
    AUDIT_ACTION_LENGTH,
    AUDIT_METHOD_LENGTH,
    AUDIT_REASON_LENGTH,
    AUDIT_ROLE_LENGTH,
    SPIFFE_ID_LENGTH,
    AuditRow,
    Base,
)
from ca.store.records import Actor, AuditEvent, AuditQuery, AuditRecord, ChainCheck
from spiffe_core.errors import FailedPrecondition, InvalidArgument

GENESIS_HASH = "0" * 64
# The canonical JSON of chain_hash and of a log line's detail. One encoder, built once: json.dumps with
# these options builds a new one for every call, which cost as much as the encoding on the issuance path.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# The most records one page of a listing may hold (`audit list` and the admin API page through more).
MAX_PAGE = 1000
VERIFY_BATCH = 500


def chain_hash(prev_hash: str, event: AuditEvent) -> str:
    """The hash of a row holding ``event`` after a row whose hash is ``prev_hash``.

    The fields added in migration 0003 (auth method, role, reason) enter the canonical form only when
    they are not empty, so rows written before them keep their hashes. docs/audit.md spells this out
    for SIEMs that re-verify an export."""
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
    return hashlib.sha256((prev_hash + _CANONICAL_JSON.encode(fields)).encode()).hexdigest()


AUDIT_LOGGER = logging.getLogger("trustmesh.audit")


def audit_line(record: AuditRecord) -> str:
    """The log line of a record: ``audit #<id>: <action> <outcome> by <actor> on <target>``, then the
    reason (for a refusal or failure) and the detail as compact JSON."""
    audited = record.event
    line = f"audit #{record.id}: {audited.action} {audited.outcome} by {audited.actor.name} on {audited.target}"
    if audited.reason:
        line += f": {audited.reason}"
    if audited.detail:
        line += " " + _CANONICAL_JSON.encode(dict(audited.detail))
    return line


def log_record(record: AuditRecord) -> None:
    """Write ``record`` to :data:`AUDIT_LOGGER` (see the module docstring)."""
    audited = record.event
    fields = {
        "audit_id": record.id,
        "action": audited.action,
        "outcome": audited.outcome,
        "actor": audited.actor.name,
        "auth_method": audited.actor.method,
        "role": audited.actor.role,
        "target": audited.target,
        "reason": audited.reason,
        "detail": dict(audited.detail),
    }
    level = logging.INFO if audited.outcome == "ok" else logging.WARNING
    AUDIT_LOGGER.log(level, "%s", audit_line(record), extra={"fields": fields})


def _cut(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _fitted(event: AuditEvent) -> AuditEvent:
    """``event`` with every text cut to its column, so an overlong reason or a caller's long name is
    recorded shortened instead of failing the audited action (PostgreSQL enforces the lengths).
    ``event`` itself when every text fits, as they nearly always do."""
    actor = event.actor
    if (
        len(actor.name) <= SPIFFE_ID_LENGTH
        and len(actor.method) <= AUDIT_METHOD_LENGTH
        and len(actor.role) <= AUDIT_ROLE_LENGTH
        and len(event.action) <= AUDIT_ACTION_LENGTH
        and len(event.target) <= SPIFFE_ID_LENGTH
        and len(event.reason) <= AUDIT_REASON_LENGTH
    ):
        return event
    return replace(
        event,
        actor=Actor(
            _cut(actor.name, SPIFFE_ID_LENGTH),
            _cut(actor.method, AUDIT_METHOD_LENGTH),
            _cut(actor.role, AUDIT_ROLE_LENGTH),
        ),
        action=_cut(event.action, AUDIT_ACTION_LENGTH),
        target=_cut(event.target, SPIFFE_ID_LENGTH),
        reason=_cut(event.reason, AUDIT_REASON_LENGTH),
    )


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


def _record(row: AuditRow) -> AuditRecord:
    return AuditRecord(id=row.id, event=_event(row), prev_hash=row.prev_hash, hash=row.hash)


def _filtered(statement: Select[AuditRow], query: AuditQuery) -> Select[AuditRow]:
    if query.since is not None:
        statement = statement.where(AuditRow.at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditRow.at <= query.until)
    if query.actor is not None:
        statement = statement.where(AuditRow.actor == query.actor)
    if query.action is not None:
        statement = statement.where(AuditRow.action.startswith(query.action, autoescape=True))
    if query.outcome is not None:
        statement = statement.where(AuditRow.outcome == query.outcome)
    return statement


_AUDIT = Base.metadata.tables[AuditRow.__tablename__]
# Every audited call appends once: compiled once per dialect, run on the driver's cursor (ca.store.driver).
_LAST_HASH = DriverStatement(select(_AUDIT.c.hash).order_by(_AUDIT.c.id.desc()).limit(1))
_APPEND = DriverStatement(
    insert(_AUDIT).returning(_AUDIT.c.id), _AUDIT, [c.name for c in _AUDIT.columns if c.name != "id"]
)


def append_audit(transaction: DriverTransaction, event: AuditEvent) -> AuditRecord:
    """Append ``event`` to the chain within ``transaction``; its log line is written once the
    transaction commits. Raises FailedPrecondition when the chain's newest record is followed already
    (a tampered log)."""
    lock_for_writers(transaction, "audit-log")
    last = transaction.execute(_LAST_HASH).fetchone()
    prev_hash = GENESIS_HASH if last is None else last[0]
    event = _fitted(event)
    hash_ = chain_hash(prev_hash, event)
    try:
        (row_id,) = transaction.execute(
            _APPEND,
            {
                "at": event.at,
                "actor": event.actor.name,
                "auth_method": event.actor.method,
                "role": event.actor.role,
                "action": event.action,
                "target": event.target,
                "outcome": event.outcome,
                "reason": event.reason,
                "detail": dict(event.detail),
                "prev_hash": prev_hash,
                "hash": hash_,
            },
        ).fetchone()
    except IntegrityError as err:
        if violation_of(err) is not Violation.UNIQUE:
            raise
        # Appends are serialized, so only a tampered log has its newest record followed already.
        raise FailedPrecondition(
            "the audit log cannot be appended to: its newest record is already followed by another, so "
            "records were moved; nothing audited can be done until it is restored. Run `trustmesh-ca audit "
            "verify` to see where"
        ) from err
    record = AuditRecord(id=row_id, event=event, prev_hash=prev_hash, hash=hash_)
    transaction.after_commit(lambda: log_record(record))
    return record


class AuditLogRepository:
    """The audit log, within the caller's unit of work (so an audited change and its audit row commit
    or roll back together)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def append(self, event: AuditEvent) -> AuditRecord:
        """:func:`append_audit` within this unit of work."""
        return append_audit(DriverTransaction.of(self._session), event)

    def list(
        self,
        query: AuditQuery | None = None,
        *,
        after_id: int = 0,
        before_id: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
    ) -> tuple[AuditRecord, ...]:
        """Up to ``limit`` (at most :data:`MAX_PAGE`) records matching ``query`` with IDs above
        ``after_id`` and below ``before_id``, oldest first (``newest_first``: newest first). Page on
        with the last ID returned. Raises InvalidArgument for a limit out of range."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit {limit} is outside 1..{MAX_PAGE}; ask for at most {MAX_PAGE} and page on")
        statement = _filtered(select(AuditRow).where(AuditRow.id > after_id), query or AuditQuery())
        if before_id is not None:
            statement = statement.where(AuditRow.id < before_id)
        order = AuditRow.id.desc() if newest_first else AuditRow.id
        return tuple(_record(row) for row in self._session.scalars(statement.order_by(order).limit(limit)))

    def head(self) -> tuple[int, str] | None:
        """The newest record's ID and hash; None for an empty log."""
        row = self._session.execute(select(AuditRow.id, AuditRow.hash).order_by(AuditRow.id.desc()).limit(1)).first()
        return None if row is None else (row.id, row.hash)

    def hashes_of(self, ids: Collection[int]) -> dict[int, str]:
        """The hash of each of the records ``ids`` that exists."""
        if not ids:
            return {}
        rows = self._session.execute(select(AuditRow.id, AuditRow.hash).where(AuditRow.id.in_(ids)))
        return {row.id: row.hash for row in rows}

    def verify_chain(self, start: ChainCheck | None = None, *, limit: int | None = None) -> ChainCheck:
        """Walk the log in ID order and report the first record that does not follow from the one
        before it, saying what is wrong (edited, deleted around, out of order).

        ``start`` (an intact ChainCheck) continues a walk after its last record; ``limit`` stops after
        that many more records, so a caller can walk a long log in short transactions (on SQLite every
        transaction holds the writer lock). Reads in batches, so memory does not grow with the log."""
        check = start or ChainCheck(ok=True, first_bad_id=None)
        assert check.ok, "a walk continues only from an intact chain"
        expected_prev = check.last_hash or GENESIS_HASH
        prev_id, records = check.last_id, check.records
        left = limit
        while left is None or left > 0:
            batch = VERIFY_BATCH if left is None else min(VERIFY_BATCH, left)
            rows = self._session.scalars(
                select(AuditRow)
                .where(AuditRow.id > (prev_id or 0))
                .order_by(AuditRow.id)
                .limit(batch)
                .execution_options(populate_existing=True)
            ).all()
            for row in rows:
                if row.prev_hash != expected_prev or chain_hash(row.prev_hash, _event(row)) != row.hash:
                    return ChainCheck(False, row.id, self._diagnose(row, prev_id, expected_prev), records)
                expected_prev, prev_id, records = row.hash, row.id, records + 1
            if left is not None:
                left -= len(rows)
            if len(rows) < batch:
                break
        return ChainCheck(True, None, "", records, prev_id, None if prev_id is None else expected_prev)

    def _diagnose(self, row: AuditRow, prev_id: int | None, expected_prev: str) -> str:
        """Why ``row`` does not follow the intact chain that ends at ``prev_id`` (hash ``expected_prev``)."""
        if chain_hash(row.prev_hash, _event(row)) != row.hash:
            return f"record {row.id} was edited (its hash does not match its contents)"
        after = "the start of the log" if prev_id is None else f"record {prev_id}"
        # The unique prev_hash names the record that rightfully comes next, wherever it is now.
        successor = self._session.scalars(select(AuditRow.id).where(AuditRow.prev_hash == expected_prev)).first()
        if successor is not None and successor > row.id:
            return (
                f"records {row.id} and {successor} are out of order (record {successor} is the one that follows "
                f"{after})"
            )
        first_missing = (prev_id or 0) + 1
        if row.id > first_missing:
            missing = (
                f"record {first_missing} was deleted"
                if row.id == first_missing + 1
                else f"records {first_missing} to {row.id - 1} were deleted"
            )
            return f"record {row.id} does not follow {after}: {missing}"
        if prev_id is None:
            return f"record {row.id} was edited (it does not follow the start of the log)"
        return (
            f"record {row.id} does not follow record {prev_id}: a record between them was deleted (and the rest "
            f"renumbered), or record {prev_id} was edited and its hash recomputed"
        )
