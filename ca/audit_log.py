"""Reading and verifying the audit log (issue 8): the auditor's use cases behind ``GET /v1/audit``,
``/v1/audit/verify`` and ``/v1/audit/export`` (:mod:`ca.http_audit`) and ``trustmesh-ca audit``.

Long reads walk the log in pages, each in a short transaction of its own: on SQLite every transaction
holds the single writer lock, and an export or a verify of a million records must not stop issuance
meanwhile. Records appended during a walk are walked too.

``verify`` checks the hash chain (:meth:`~ca.store.repositories.AuditLogRepository.verify_chain` names
the first record edited, deleted or out of order), then every signed checkpoint
(:mod:`ca.audit_checkpoints`): its signature, and that the record it covers is still there with the
same hash — a log that ends before a checkpoint's record lost its tail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ca.audit_checkpoints import CheckpointTrust, Verdict, judge
from ca.store.engine import Database
from ca.store.records import AuditCheckpoint, AuditQuery, AuditRecord, ChainCheck
from ca.store.repositories import AuditCheckpointRepository, AuditLogRepository
from ca.store.repositories.audit import MAX_PAGE
from spiffe_core.clock import Clock
from spiffe_core.durations import format_duration

# Records hashed in one transaction of a verify walk (a few tens of milliseconds).
WALK_STEP = 5000
_CHECKPOINT_PAGE = 500


def when(at: datetime) -> str:
    """How a record's or checkpoint's time appears in a problem: ``2026-11-22 12:00:00 UTC``."""
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def walk_chain(database: Database, start: ChainCheck | None = None) -> ChainCheck:
    """Verify the chain from ``start`` (an intact check; None: the beginning) to the end, in steps of
    :data:`WALK_STEP` records, each in its own transaction."""
    check = start or ChainCheck(ok=True, first_bad_id=None)
    while True:
        with database.transaction() as session:
            step = AuditLogRepository(session).verify_chain(check, limit=WALK_STEP)
        if not step.ok or step.records - check.records < WALK_STEP:
            return step
        check = step


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """What ``audit verify`` found. ``problem`` is the first one, in one line naming the record (or
    checkpoint) and what is wrong ("" when the log verifies); ``first_bad_id`` the record it names.
    ``checkpoints`` counts the checkpoints that verified, ``unverifiable`` those signed by authorities
    this CA no longer holds; ``newest`` is the newest that verified. ``notes`` are observations that are
    not proof of tampering (a stale newest checkpoint)."""

    ok: bool
    problem: str
    first_bad_id: int | None
    records: int
    last_id: int | None
    checkpoints: int
    unverifiable: int
    newest: AuditCheckpoint | None
    newest_age: timedelta | None
    notes: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        """One line: the problem, or what verified."""
        if not self.ok:
            return self.problem
        line = f"the audit log verifies: {self.records} records"
        if self.last_id is not None:
            line += f" up to record {self.last_id}"
        if self.newest is None or self.newest_age is None:
            return line + "; no checkpoint yet, so records cut off the end could go unnoticed"
        return (
            f"{line}; {self.checkpoints} checkpoints verified, the newest (checkpoint {self.newest.id}, signed "
            f"{when(self.newest.at)}, {format_duration(self.newest_age)} ago) covers up to record {self.newest.last_id}"
        )


class AuditLog:
    """``trust`` answers the certificates checkpoints may be signed with: in the CA, those of the
    authorities it holds (:meth:`~ca.audit_checkpoints.CheckpointTrust.of`); checking a stopped CA's
    datastore, those whose keys its key manager holds (``of_held_keys``)."""

    def __init__(
        self, database: Database, trust: Callable[[], CheckpointTrust], clock: Clock, checkpoint_interval: timedelta
    ) -> None:
        self._database = database
        self._trust = trust
        self._clock = clock
        self._interval = checkpoint_interval

    def list(
        self,
        query: AuditQuery,
        *,
        after_id: int = 0,
        before_id: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
    ) -> tuple[AuditRecord, ...]:
        """One page of matching records (at most :data:`~ca.store.repositories.audit.MAX_PAGE`);
        raises InvalidArgument for a limit out of range."""
        with self._database.transaction() as session:
            return AuditLogRepository(session).list(
                query, after_id=after_id, before_id=before_id, newest_first=newest_first, limit=limit
            )

    def export(self, query: AuditQuery) -> Iterator[AuditRecord]:
        """Every matching record, oldest first, read a page at a time (bounded memory)."""
        after_id = 0
        while True:
            page = self.list(query, after_id=after_id, limit=MAX_PAGE)
            yield from page
            if len(page) < MAX_PAGE:
                return
            after_id = page[-1].id

    def verify(self) -> AuditVerification:
        """Check the chain, then every checkpoint against it."""
        chain = walk_chain(self._database)
        if not chain.ok:
            return AuditVerification(False, chain.problem, chain.first_bad_id, chain.records, None, 0, 0, None, None)
        trust = self._trust()
        verified = unverifiable = 0
        newest: AuditCheckpoint | None = None
        after_id = 0
        while True:
            with self._database.transaction() as session:
                page = AuditCheckpointRepository(session).list(after_id=after_id, limit=_CHECKPOINT_PAGE)
                hashes = AuditLogRepository(session).hashes_of({c.last_id for c in page})
            for checkpoint in page:
                verdict = judge(checkpoint, trust)
                if verdict is Verdict.UNVERIFIABLE:
                    unverifiable += 1
                    continue
                problem = _checkpoint_problem(checkpoint, verdict, chain, hashes.get(checkpoint.last_id))
                if problem:
                    return AuditVerification(
                        False,
                        problem,
                        checkpoint.last_id,
                        chain.records,
                        chain.last_id,
                        verified,
                        unverifiable,
                        None,
                        None,
                    )
                verified += 1
                if newest is None or checkpoint.last_id >= newest.last_id:
                    newest = checkpoint
            if len(page) < _CHECKPOINT_PAGE:
                break
            after_id = page[-1].id
        now = self._clock.now()
        age = None if newest is None else max(now - newest.at, timedelta(0))
        return AuditVerification(
            True, "", None, chain.records, chain.last_id, verified, unverifiable, newest, age, self._notes(newest, now)
        )

    def _notes(self, newest: AuditCheckpoint | None, now: datetime) -> tuple[str, ...]:
        """A record older than two checkpoint intervals that no checkpoint covers yet: the checkpoint task
        is failing, or the newest checkpoints were deleted (with the records they covered, perhaps)."""
        with self._database.transaction() as session:
            after = AuditLogRepository(session).list(after_id=0 if newest is None else newest.last_id, limit=1)
        if not after or now - after[0].event.at <= 2 * self._interval:
            return ()
        first = after[0]
        return (
            f"record {first.id} (of {when(first.event.at)}) and the ones after it are covered by no checkpoint, "
            f"although one is written every {format_duration(self._interval)}: the checkpoint task is failing "
            "(see the CA's log), or the newest checkpoints were deleted",
        )


def _checkpoint_problem(
    checkpoint: AuditCheckpoint, verdict: Verdict, chain: ChainCheck, stored_hash: str | None
) -> str:
    signed = f"checkpoint {checkpoint.id} (signed {when(checkpoint.at)})"
    if verdict is Verdict.FORGED:
        return (
            f"{signed} does not verify with the certificate of authority {checkpoint.authority_id} it names: "
            "it was forged or edited"
        )
    if chain.last_id is None or checkpoint.last_id > chain.last_id:
        ends = "the log is empty" if chain.last_id is None else f"the log ends at record {chain.last_id}"
        return f"{ends} but {signed} covers up to record {checkpoint.last_id}: records were cut off the end"
    if stored_hash is None:
        return f"record {checkpoint.last_id} is missing although {signed} covers it: the log was rewritten"
    if stored_hash != checkpoint.last_hash:
        return (
            f"record {checkpoint.last_id} is not the one {signed} covers: the log was cut back to before it "
            "and written again, or rewritten from there on"
        )
    return ""
