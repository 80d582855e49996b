"""Keeps every partner's bundle fresh (DESIGN §3 "Federation"; SPIFFE_Federation.md §6).

One task per relationship, so partners are fetched concurrently and a slow or dead one delays no other.
Each fetches on the partner's ``spiffe_refresh_hint``, bounded by ``federation.min_refresh`` and
``max_refresh``; after a failure it retries with backoff (1 s doubling, never slower than its normal
period) while the last good bundle stays in force. Every outcome is written to the relationship's
status (last success, sequence, next refresh, last error) and to ``/metrics``; a changed bundle is
announced to the Sync hub in the same unit of work, so agents get it at once.

A fetch can also be asked for at once: by an operator (``federation refresh``) and, rate limited per
partner to one per ``unknown_key_refresh_interval``, by an agent that met a JWT key ID the partner's
bundle lacks (:meth:`FederationRefresher.refresh_for_unknown_key`), so a partner's brand-new key
validates without waiting for the refresh hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge

from ca.federation.fetch import BundleRefused, FetchLimits, PartnerEndpoint, fetch_partner_bundle
from ca.federation.relationships import FederationRelationships, parsed_bundle
from ca.store.engine import Database
from ca.store.records import FederationRelationship
from ca.store.repositories import FederationRepository
from ca.sync import Change, ChangeHub, announce
from spiffe_core.backoff import Backoff
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import NotFound, TrustmeshError
from spiffe_core.spiffe_id import TrustDomain

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0
# How often the set of relationships is re-read (another replica may have created or deleted one).
RESCAN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    min_refresh: timedelta
    max_refresh: timedelta
    unknown_key_interval: timedelta

    def period(self, bundle: Bundle | None) -> timedelta:
        """The partner's refresh hint (max_refresh when it gives none), bounded by min and max."""
        hint = None if bundle is None or not bundle.refresh_hint else timedelta(seconds=bundle.refresh_hint)
        return min(max(hint or self.max_refresh, self.min_refresh), self.max_refresh)


class FederationMetrics:
    """Per trust domain status on the CA's ``/metrics``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        label = ["trust_domain"]
        self.last_success = Gauge(
            "trustmesh_federation_last_success_timestamp_seconds",
            "When the partner's bundle was last fetched successfully",
            label,
            registry=registry,
        )
        self.sequence = Gauge(
            "trustmesh_federation_bundle_sequence",
            "spiffe_sequence of the partner's bundle in force",
            label,
            registry=registry,
        )
        self.next_refresh = Gauge(
            "trustmesh_federation_next_refresh_timestamp_seconds",
            "When the partner is fetched next",
            label,
            registry=registry,
        )
        self.healthy = Gauge(
            "trustmesh_federation_last_fetch_ok",
            "1 when the last fetch succeeded, 0 when it was refused",
            label,
            registry=registry,
        )
        self.failures = Counter(
            "trustmesh_federation_fetch_failures", "Fetches refused or failed", label, registry=registry
        )
        self.bundle_expiry = Gauge(
            "trustmesh_federation_bundle_expiry_timestamp_seconds",
            "When the last X.509 authority of the partner's bundle in force expires (after that none of "
            "its X509-SVIDs verify here), unix seconds",
            label,
            registry=registry,
        )

    def show(self, relationship: FederationRelationship) -> None:
        td = relationship.trust_domain.name
        bundle = parsed_bundle(relationship)
        if bundle is not None:
            self.sequence.labels(td).set(bundle.sequence)
            if bundle.x509_authorities:
                last = max(cert.not_valid_after_utc for cert in bundle.x509_authorities)
                self.bundle_expiry.labels(td).set(last.timestamp())
        if relationship.last_success_at is not None:
            self.last_success.labels(td).set(relationship.last_success_at.timestamp())
        if relationship.next_refresh_at is not None:
            self.next_refresh.labels(td).set(relationship.next_refresh_at.timestamp())
        if relationship.last_attempt_at is not None:
            self.healthy.labels(td).set(0 if relationship.last_error else 1)

    def forget(self, trust_domain: TrustDomain) -> None:
        for metric in (
            self.last_success,
            self.sequence,
            self.next_refresh,
            self.healthy,
            self.failures,
            self.bundle_expiry,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(trust_domain.name)


class FederationRefresher:
    def __init__(
        self,
        *,
        database: Database,
        hub: ChangeHub,
        relationships: FederationRelationships,
        limits: FetchLimits,
        policy: RefreshPolicy,
        web_context: ssl.SSLContext,
        clock: Clock,
        metrics: FederationMetrics,
        rng: random.Random | None = None,
    ) -> None:
        self._database = database
        self._hub = hub
        self._relationships = relationships
        self._limits = limits
        self._policy = policy
        self._web_context = web_context
        self._clock = clock
        self._metrics = metrics
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rescan = asyncio.Event()
        self._wake: dict[TrustDomain, asyncio.Event] = {}
        self._waiters: dict[TrustDomain, list[asyncio.Future[bool]]] = {}
        self._unknown_key_at: dict[TrustDomain, float] = {}
        relationships.add_listener(self.wake)

    def wake(self, trust_domain: TrustDomain) -> None:
        """Fetch ``trust_domain`` now (or start/stop its task). Thread-safe; a no-op before :meth:`run`."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_now, trust_domain)

    def _wake_now(self, trust_domain: TrustDomain) -> None:
        event = self._wake.get(trust_domain)
        if event is None:
            self._rescan.set()  # a new relationship: start its task
        else:
            event.set()

    async def refresh_for_unknown_key(self, trust_domain: TrustDomain) -> bool:
        """Fetch the partner now because a key ID it should have is missing, and wait for the outcome:
        True when a good bundle was fetched. At most once per partner per ``unknown_key_interval``
        (False otherwise, and for a trust domain with no relationship), so no caller can make the CA
        hammer a partner."""
        event = self._wake.get(trust_domain)
        now = time.monotonic()
        last = self._unknown_key_at.get(trust_domain)
        if event is None or (last is not None and now - last < self._policy.unknown_key_interval.total_seconds()):
            return False
        self._unknown_key_at[trust_domain] = now
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(trust_domain, []).append(waiter)
        event.set()
        try:
            return await asyncio.wait_for(waiter, self._limits.timeout_seconds + 1)
        except TimeoutError:
            return False

    async def run(self) -> None:
        """Fetch every partner on its schedule until cancelled."""
        self._loop = asyncio.get_running_loop()
        tasks: dict[TrustDomain, asyncio.Task[None]] = {}
        try:
            while True:
                try:
                    current = {r.trust_domain for r in await asyncio.to_thread(self._relationships.list)}
                except TrustmeshError as err:
                    log.warning("cannot read federation relationships: %s", err)
                    current = set(tasks)
                for td in current - set(tasks):
                    self._wake[td] = asyncio.Event()
                    tasks[td] = asyncio.create_task(self._partner(td), name=f"federation {td}")
                for td in set(tasks) - current:
                    tasks.pop(td).cancel()
                    self._wake.pop(td, None)
                    self._metrics.forget(td)
                for td, task in list(tasks.items()):
                    if task.done():  # ended by itself: its relationship is gone
                        tasks.pop(td)
                        self._wake.pop(td, None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rescan.wait(), RESCAN_SECONDS)
                self._rescan.clear()
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            self._loop = None

    async def _partner(self, trust_domain: TrustDomain) -> None:
        # A failed fetch is retried after 1 s doubling, never slower than the partner's period (the cap
        # of each failure, :meth:`_fetch`), which is at most max_refresh.
        longest = self._policy.max_refresh.total_seconds()
        backoff = Backoff(log, min(BACKOFF_BASE_SECONDS, longest), longest, rng=self._rng)
        wake = self._wake[trust_domain]
        while True:
            try:
                relationship = await asyncio.to_thread(self._relationships.get, trust_domain)
            except NotFound:
                return
            except TrustmeshError as err:
                log.warning("cannot read the relationship with %s: %s", trust_domain, err)
                relationship = None
            if relationship is not None:
                self._metrics.show(relationship)
                due = relationship.next_refresh_at or self._clock.now()
                delay = (due - self._clock.now()).total_seconds()
            else:
                delay = RESCAN_SECONDS
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
            wake.clear()
            if relationship is None:
                continue
            try:
                relationship = await asyncio.to_thread(self._relationships.get, trust_domain)
            except NotFound:
                return
            ok = await self._fetch(relationship, backoff)
            for waiter in self._waiters.pop(trust_domain, []):
                if not waiter.done():
                    waiter.set_result(ok)

    async def _fetch(self, relationship: FederationRelationship, backoff: Backoff) -> bool:
        td = relationship.trust_domain
        current = parsed_bundle(relationship)
        endpoint = PartnerEndpoint(
            td, relationship.bundle_endpoint_url, relationship.profile, relationship.endpoint_spiffe_id
        )
        try:
            async with asyncio.timeout(self._limits.timeout_seconds):
                bundle = await fetch_partner_bundle(
                    endpoint, current, self._limits, self._web_context, self._clock.now()
                )
        except TimeoutError:
            error: str | None = (
                f"no complete answer within federation.fetch_timeout ({self._limits.timeout_seconds:g} s)"
            )
        except BundleRefused as err:
            error = str(err)
        else:
            error = None
        now = self._clock.now()
        if error is None:
            next_at = now + self._policy.period(bundle)
            changed = current is None or bundle != current
            stored = await asyncio.to_thread(
                functools.partial(self._record, td, now, next_at, bundle=bundle.to_json(), error="", changed=changed)
            )
            backoff.succeeded()
            if changed:
                log.info("federated bundle of %s updated to sequence %d", td, bundle.sequence)
        else:
            self._metrics.failures.labels(td.name).inc()
            delay = backoff.failed(
                f"bundle of {td} refused or unavailable ({error}); keeping the last good one",
                cap=self._policy.period(current).total_seconds(),
            )
            next_at = now + timedelta(seconds=delay)
            stored = await asyncio.to_thread(
                functools.partial(self._record, td, now, next_at, bundle=None, error=error, changed=False)
            )
        if stored is not None:
            self._metrics.show(stored)
        return error is None

    def _record(
        self, td: TrustDomain, at: datetime, next_at: datetime, *, bundle: str | None, error: str, changed: bool
    ) -> FederationRelationship | None:
        try:
            with self._database.transaction() as session:
                stored = FederationRepository(session).record_attempt(
                    td, at=at, next_refresh_at=next_at, bundle=bundle, error=error
                )
                if changed:
                    announce(session, self._hub, Change.everyone())
        except NotFound:
            return None  # deleted while it was fetched
        return stored
