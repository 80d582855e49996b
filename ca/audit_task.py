"""The audit log's upkeep in the CA's TaskGroup (:func:`ca.server.serve`): every ``[audit]
checkpoint_interval``, write the summaries of refusals the throttle counted instead of recording
(:meth:`ca.audit.AuditTrail.flush_suppressed`), then sign a checkpoint of the chain's head when it
moved (:mod:`ca.audit_checkpoints`).

Before signing, the records since the newest checkpoint are verified, so a checkpoint never vouches
for a chain that was already broken; a broken one is logged (run ``trustmesh-ca audit verify``) and
retried with backoff, like every failure here (datastore down, no active authority). Every replica runs
it: writers take a lock, and a head that another replica signed already is not signed again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta
from typing import Protocol

from ca.audit import AuditTrail
from ca.audit_checkpoints import SignedHead, sign_head
from ca.audit_log import walk_chain, when
from ca.authority import AuthoritySet
from ca.store.engine import Database
from ca.store.records import AuditCheckpoint, ChainCheck
from ca.store.repositories import AuditCheckpointRepository, AuditLogRepository
from spiffe_core.backoff import Backoff, retry_forever
from spiffe_core.clock import Clock
from spiffe_core.errors import FailedPrecondition

log = logging.getLogger(__name__)


class AuthoritySource(Protocol):
    def get_current(self) -> AuthoritySet: ...


_RETRY_BASE_SECONDS = 1.0


class AuditKeeper:
    def __init__(
        self,
        database: Database,
        authorities: AuthoritySource,
        trail: AuditTrail,
        clock: Clock,
        interval: timedelta,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._database = database
        self._authorities = authorities
        self._trail = trail
        self._clock = clock
        self._interval = interval
        seconds = interval.total_seconds()
        self._backoff = Backoff(log, min(_RETRY_BASE_SECONDS, seconds), seconds, rng=rng)

    def tick(self) -> AuditCheckpoint | None:
        """Flush the refusal summaries, then checkpoint the head if it moved; returns the new checkpoint.
        Blocking. Raises FailedPrecondition when the log since the newest checkpoint does not verify,
        and what the datastore or the authorities raise."""
        self._trail.flush_suppressed(self._clock.now())
        return self.checkpoint()

    def checkpoint(self) -> AuditCheckpoint | None:
        """Sign and store the head of the chain unless the newest checkpoint covers it already. The
        newest checkpoint's record is checked every time, so a log cut back is noticed (and logged) within
        an interval even when nothing new is written."""
        with self._database.transaction() as session:
            newest = AuditCheckpointRepository(session).newest()
            head = AuditLogRepository(session).head()
        start = self._start(newest)
        if head is None or (newest is not None and newest.last_id >= head[0]):
            return None
        chain = walk_chain(self._database, start)
        if not chain.ok or chain.last_id is None or chain.last_hash is None:
            raise FailedPrecondition(
                f"not signing an audit checkpoint: {chain.problem}; run `trustmesh-ca audit verify`"
            )
        now = self._clock.now()
        signed = sign_head(self._authorities.get_current().active_x509(now), now, chain.last_id, chain.last_hash)
        return self._store(signed)

    def _start(self, newest: AuditCheckpoint | None) -> ChainCheck | None:
        """Where the walk starts: after the newest checkpoint's record, which must still be as signed."""
        if newest is None:
            return None
        with self._database.transaction() as session:
            stored = AuditLogRepository(session).hashes_of([newest.last_id]).get(newest.last_id)
        if stored != newest.last_hash:
            raise FailedPrecondition(
                f"not signing an audit checkpoint: record {newest.last_id} is no longer the one checkpoint "
                f"{newest.id} (signed {when(newest.at)}) covers; run `trustmesh-ca audit verify`"
            )
        return ChainCheck(True, None, "", 0, newest.last_id, newest.last_hash)

    def _store(self, signed: SignedHead) -> AuditCheckpoint | None:
        with self._database.transaction() as session:
            checkpoints = AuditCheckpointRepository(session)
            checkpoints.lock()
            newest = checkpoints.newest()
            if newest is not None and newest.last_id >= signed.last_id:
                return None  # another replica signed this head (or a newer one) meanwhile
            return checkpoints.add(
                at=signed.at,
                last_id=signed.last_id,
                last_hash=signed.last_hash,
                authority_id=signed.authority_id,
                certificate_der=signed.certificate_der,
                signature=signed.signature,
            )

    async def run(self) -> None:
        """Tick every interval until cancelled; failures are retried with backoff (capped at the
        interval) and logged at most every 10 s."""
        interval = self._interval.total_seconds()

        async def attempt() -> float:
            await asyncio.to_thread(self.tick)
            return interval

        await retry_forever(attempt, self._backoff, "audit upkeep", first_delay=interval)
