"""The scheduled rotation task: applies what :mod:`ca.rotation` says is due, one change at a time
(:class:`~ca.authority_changes.AuthorityChanges`), re-signs CRLs when they are due, and keeps going
through failures with backoff — a CA whose upstream is down keeps serving and says why on ``/ready``.

Each step it takes is audited in the step's own transaction, as ``authority.<step>`` by
``system:rotator``; a step another replica took first is neither taken nor recorded again. Failed
attempts are not audited one by one (they are retried every few seconds); they are logged, and
``/ready`` says why while nothing usable is active. Steps taken, failed checks and the last good check
are on ``/metrics`` (:class:`~ca.metrics.RotationMetrics`), which the shipped alerts watch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session

from ca.audit import OK, ROTATOR
from ca.authority import AuthorityState
from ca.authority_changes import AuthorityChanges, StateChange, find, retire_active
from ca.metrics import SCHEDULE, RotationMetrics
from ca.rotation import RotationParams, Step, StepKind, next_check, plan_rotation
from ca.store.records import AuditEvent, AuthorityRecord
from ca.store.repositories import AuditLogRepository
from spiffe_core.backoff import Backoff, retry_forever
from spiffe_core.clock import Clock
from spiffe_core.errors import TrustmeshError

log = logging.getLogger(__name__)

# The rotation task re-reads the datastore at least this often (another replica may have changed it).
MAX_CHECK_INTERVAL = timedelta(seconds=10)
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0


class Rotator:
    def __init__(
        self,
        changes: AuthorityChanges,
        params: RotationParams,
        clock: Clock,
        rng: random.Random | None = None,
        metrics: RotationMetrics | None = None,
    ) -> None:
        self._changes = changes
        self._params = params
        self._clock = clock
        self._backoff = Backoff(log, RETRY_BASE_SECONDS, RETRY_CAP_SECONDS, rng=rng)
        self._metrics = metrics or RotationMetrics(CollectorRegistry())
        self._last_error: str | None = None

    @property
    def last_error(self) -> str | None:
        """Why the last scheduled rotation step failed, None after a success (for /ready)."""
        return self._last_error

    def tick(self) -> datetime | None:
        """Apply every rotation step due now (each in its own transaction); re-sign the CRLs when due.
        Returns when to look again. Counted on ``/metrics``: each step taken, each failed check (raised
        on to the caller), the time of the last good one."""
        try:
            next_at = self._check()
        except Exception:
            self._metrics.failures.inc()
            raise
        self._metrics.last_success.set(self._clock.now().timestamp())
        return next_at

    def _check(self) -> datetime | None:
        authorities = self._changes.authorities
        records, signed_until = self._changes.rotation_view()
        for step in plan_rotation(records, signed_until, self._clock.now(), self._params):
            self._apply(step)
        refresh_at = authorities.crls_refresh_at
        if refresh_at is not None and self._clock.now() >= refresh_at:
            authorities.refresh()
        records, signed_until = self._changes.rotation_view()
        moments = [
            m
            for m in (next_check(records, signed_until, self._clock.now(), self._params), authorities.crls_refresh_at)
            if m
        ]
        return min(moments) if moments else None

    async def run(self) -> None:
        """Keep authorities rotating until cancelled. Failures (upstream or datastore down) are retried
        with exponential backoff capped at a minute, logged at most every 10 s, and reported by /ready
        (through :attr:`last_error`) while nothing usable is active."""
        await retry_forever(self._attempt, self._backoff, "authority rotation")

    async def _attempt(self) -> float:
        """One :meth:`tick`, remembering why it failed (for /ready); returns the seconds until the next:
        the next rotation point or CRL refresh, and at most :data:`MAX_CHECK_INTERVAL`."""
        try:
            next_at = await asyncio.to_thread(self.tick)
        except Exception as err:
            self._last_error = str(err) if isinstance(err, TrustmeshError) else f"internal error: {err!r}"
            raise
        self._last_error = None
        delay = MAX_CHECK_INTERVAL.total_seconds()
        if next_at is not None:
            delay = min(delay, max((next_at - self._clock.now()).total_seconds(), 0.0) + 0.05)
        return delay

    def reload_quietly(self) -> None:
        """Re-read the snapshot after another replica's change; a datastore hiccup is logged, not raised
        (the rotation task re-reads it within seconds anyway)."""
        try:
            self._changes.authorities.refresh()
        except TrustmeshError as err:
            log.warning("could not reload authorities after another replica's change: %s", err)

    def _apply(self, step: Step) -> None:
        def change(session: Session, records: Sequence[AuthorityRecord]) -> bool:
            # Planned again under the lock: another replica may have done it already.
            current, signed_until = self._changes.rotation_view(session)
            if step not in plan_rotation(current, signed_until, self._clock.now(), self._params):
                return False
            kind = step.authority_kind
            if step.kind is StepKind.PREPARE:
                target = self._changes.create(session, kind, AuthorityState.PREPARED, records).id
                log.info("prepared %s authority %s (%s); published in the bundle now", kind, target, step.why)
            elif step.kind is StepKind.RECOVER:
                self._changes.set_states(session, retire_active(records, kind))
                target = self._changes.create(session, kind, AuthorityState.ACTIVE).id
                log.warning("activated a new %s authority %s at once (%s)", kind, target, step.why)
            elif step.kind is StepKind.ACTIVATE:
                assert step.authority_id is not None
                target = step.authority_id
                activated = StateChange(target, kind, AuthorityState.PREPARED, AuthorityState.ACTIVE)
                self._changes.set_states(session, [activated, *retire_active(records, kind)])
                log.info("activated %s authority %s (%s)", kind, target, step.why)
            else:
                assert step.authority_id is not None
                target = step.authority_id
                self._changes.prune(session, find(records, target))
                log.info("pruned %s authority %s (%s)", kind, target, step.why)
            detail = {"kind": kind.value, "why": step.why}
            AuditLogRepository(session).append(
                AuditEvent(self._clock.now(), ROTATOR, f"authority.{step.kind.value}", target, OK, detail)
            )
            return True

        if self._changes.run(change):
            self._metrics.steps.labels(step.kind.value, step.authority_kind.value, SCHEDULE).inc()
