"""Retention of the issued-certificate record (DESIGN §3 "Leaf revocation"): the CA records every X509-SVID
it signs, and deletes each record ``[datastore] issued_certificate_retention`` after the SVID expired, so
the table holds roughly the live SVIDs plus one retention's worth of expired ones instead of growing
forever.

Why deleting only long-expired records is safe:

* CRLs list revoked SVIDs that are still unexpired (``IssuedCertificateRepository.revoked_live``);
  an expired record is never on a CRL.
* Authority pruning waits for the latest notAfter of everything an authority signed
  (``latest_expiry``). Deleting records that expired before ``now - retention`` only ever removes
  the *earliest* expiries, so that maximum is unchanged while any later record remains; when all of an
  authority's records go, its latest expiry was in the past anyway, so its prune time was already due
  (see :func:`ca.rotation.prune_at`, which then still waits a refresh hint after it stopped signing).
* Revoking a serial whose record is gone answers NotFound: that SVID had expired long ago.

Each run also deletes the records of used x509pop nonces and accepted exchange statements that have
expired (:mod:`ca.store.repositories.x509pop_nonces`): an expired one is refused as expired, so its
record no longer guards anything. There is one per x509pop attestation or exchange since about the
last run, so one statement does.

And it deletes join tokens (used or not) that expired more than the same retention ago
(:meth:`~ca.store.repositories.JoinTokenRepository.purge_expired`): an expired token is refused, and
the inventory shows it for one retention after it expired (who made it, which agent used it), as it
shows an expired SVID's record; after that its row guards nothing. Tokens are made by operators, a
few per agent, so one statement does here too.

Runs in the CA's TaskGroup (:func:`ca.server.serve`): every :data:`PRUNE_INTERVAL`, in transactions of
at most :data:`BATCH_SIZE` rows and at most :data:`MAX_BATCHES_PER_RUN` of them, so one run never holds
locks or the datastore for long; a backlog is worked off by the next runs, which come sooner
(:data:`BACKLOG_INTERVAL`). Each run logs one line with the count. Every replica may run it: the
deletes are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from ca.store.engine import Database
from ca.store.repositories import IssuedCertificateRepository, JoinTokenRepository, UsedNonceRepository
from spiffe_core.backoff import Backoff, retry_forever
from spiffe_core.clock import Clock
from spiffe_core.durations import format_duration

log = logging.getLogger(__name__)

PRUNE_INTERVAL = timedelta(minutes=10)
BACKLOG_INTERVAL = timedelta(seconds=10)
BATCH_SIZE = 1000
MAX_BATCHES_PER_RUN = 50
_RETRY_BASE_SECONDS = 1.0
_RETRY_CAP_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class PruneResult:
    deleted: int
    # True when the run stopped at MAX_BATCHES_PER_RUN with more left to delete.
    more: bool
    # Records of expired x509pop nonces and exchange statements deleted.
    nonces: int = 0
    # Join tokens that expired more than the retention ago, deleted.
    join_tokens: int = 0


class IssuedCertificateRetention:
    """Deletes issued-certificate records that expired more than ``retention`` ago."""

    def __init__(
        self,
        database: Database,
        retention: timedelta,
        clock: Clock,
        *,
        batch_size: int = BATCH_SIZE,
        max_batches: int = MAX_BATCHES_PER_RUN,
    ) -> None:
        if retention < timedelta(0) or batch_size < 1 or max_batches < 1:
            raise ValueError("retention must not be negative, and batch_size and max_batches must be at least 1")
        self._database = database
        self._retention = retention
        self._clock = clock
        self._batch_size = batch_size
        self._max_batches = max_batches
        self._backoff = Backoff(log, _RETRY_BASE_SECONDS, _RETRY_CAP_SECONDS)

    def prune_once(self) -> PruneResult:
        """One run: delete, one transaction per batch, the records of certificates whose notAfter is
        older than now minus the retention; stop after ``max_batches`` full batches. Before that, delete
        the records of expired x509pop nonces and exchange statements, and the join tokens that expired
        before that cutoff. Blocking; raises what the datastore raises (a batch already committed stays
        deleted)."""
        now = self._clock.now()
        cutoff = now - self._retention
        with self._database.transaction() as session:
            nonces = UsedNonceRepository(session).delete_expired(now)
            tokens = JoinTokenRepository(session).purge_expired(cutoff)
        deleted = 0
        for _ in range(self._max_batches):
            with self._database.transaction() as session:
                count = IssuedCertificateRepository(session).delete_expired(cutoff, self._batch_size)
            deleted += count
            if count < self._batch_size:
                return PruneResult(deleted, more=False, nonces=nonces, join_tokens=tokens)
        return PruneResult(deleted, more=True, nonces=nonces, join_tokens=tokens)

    async def run(self) -> None:
        """Prune now and then every :data:`PRUNE_INTERVAL` until cancelled, logging one line per run.
        A failing datastore is retried with backoff and never stops the CA."""
        await retry_forever(self._attempt, self._backoff, "pruning expired issued-certificate records")

    async def _attempt(self) -> float:
        """One logged run; returns the seconds until the next (sooner while a backlog is left)."""
        result = await asyncio.to_thread(self.prune_once)
        log.info(
            "pruned %d issued-certificate records that expired over %s ago%s%s%s",
            result.deleted,
            format_duration(self._retention),
            f" and {result.nonces} expired x509pop nonces or exchange statements" if result.nonces else "",
            f" and {result.join_tokens} join tokens that expired as long ago" if result.join_tokens else "",
            "; more left for the next run" if result.more else "",
        )
        return (BACKLOG_INTERVAL if result.more else PRUNE_INTERVAL).total_seconds()
