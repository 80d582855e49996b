"""Prometheus metrics of the agent (docs/observability.md lists them), on a registry of its own.

Events are counted where they happen: streams opened and closed on the SDS and Workload API sockets,
and the time from a cache snapshot being published to a stream sending it (:class:`AgentMetrics`).
State is read at scrape time (:class:`AgentStateCollector`): the agent's own SVID expiry, each
workload SVID's expiry, the bundle's age, the Sync stream's health and readiness.

Workload SVIDs are labelled by SPIFFE ID — bounded by the registration entries parented to this agent,
and capped at ``health.max_svid_series`` (the soonest to expire are kept: they are what alerts need).
Two entries with one SPIFFE ID show as one series with the earlier expiry.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sds.cache import CacheSnapshot
from sds.health import AgentHealth

SDS = "sds"
WORKLOAD_API = "workload_api"
# From a new snapshot to a stream sending it: microseconds normally, more with many streams or slow proxies.
PUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    streams: Gauge = field(init=False)
    push_seconds: Histogram = field(init=False)

    def __post_init__(self) -> None:
        self.streams = Gauge(
            "trustmesh_agent_streams",
            "Streams open on the agent's sockets (SDS StreamSecrets/DeltaSecrets, Workload API Fetch* streams)",
            ["api"],
            registry=self.registry,
        )
        for api in (SDS, WORKLOAD_API):
            self.streams.labels(api)  # shown as 0 before the first stream
        self.push_seconds = Histogram(
            "trustmesh_agent_push_seconds",
            "Time from the agent publishing new SVIDs or bundles to a stream sending them",
            ["api"],
            buckets=PUSH_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    @contextlib.contextmanager
    def stream(self, api: str) -> Iterator[None]:
        """Count a stream of ``api`` as open for the block's duration."""
        gauge = self.streams.labels(api)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def pushed(self, api: str, snapshot: CacheSnapshot) -> None:
        """A stream of ``api`` sent what ``snapshot`` changed (not an answer to a request)."""
        if snapshot.published_at:
            self.push_seconds.labels(api).observe(max(time.monotonic() - snapshot.published_at, 0.0))


class AgentStateCollector(Collector):
    """The agent's state as gauges, read from :class:`~sds.health.AgentHealth` at scrape time."""

    def __init__(self, health: AgentHealth, max_svid_series: int) -> None:
        self._health = health
        self._max_series = max_svid_series

    def collect(self) -> Iterator[Metric]:
        health = self._health
        agent = GaugeMetricFamily(
            "trustmesh_agent_svid_expiry_timestamp_seconds",
            "When the agent's own X509-SVID expires, unix seconds; absent before it has one",
            labels=["spiffe_id"],
        )
        svid = health.agent_svid()
        if svid is not None:
            agent.add_metric([str(svid.spiffe_id)], svid.leaf.not_valid_after_utc.timestamp())
        yield agent
        snapshot = health.snapshot()
        yield GaugeMetricFamily(
            "trustmesh_agent_workload_svids", "Workload X509-SVIDs the agent holds", value=len(snapshot.svids)
        )
        workloads = GaugeMetricFamily(
            "trustmesh_agent_workload_svid_expiry_timestamp_seconds",
            "When each workload X509-SVID expires, unix seconds, by SPIFFE ID (the soonest "
            "health.max_svid_series of them)",
            labels=["spiffe_id"],
        )
        for spiffe_id, not_after in self._soonest(snapshot):
            workloads.add_metric([spiffe_id], not_after.timestamp())
        yield workloads
        yield GaugeMetricFamily(
            "trustmesh_agent_bundle_age_seconds",
            "Seconds since the CA last confirmed the agent's trust bundle (0 while the Sync stream delivers)",
            value=health.bundle_age().total_seconds(),
        )
        yield from self._sync(health)
        yield GaugeMetricFamily(
            "trustmesh_agent_ready", "1 when /ready answers 200, else 0", value=health.not_ready_reason() is None
        )

    def _soonest(self, snapshot: CacheSnapshot) -> list[tuple[str, datetime]]:
        earliest: dict[str, datetime] = {}
        for svid in snapshot.svids:
            key, not_after = str(svid.spiffe_id), svid.cert_chain[0].not_valid_after_utc
            earliest[key] = min(not_after, earliest.get(key, not_after))
        return sorted(earliest.items(), key=lambda item: (item[1], item[0]))[: self._max_series]

    @staticmethod
    def _sync(health: AgentHealth) -> Iterator[Metric]:
        sync = health.sync
        yield GaugeMetricFamily(
            "trustmesh_agent_ca_sync_connected", "1 while the Sync stream to the CA delivers", value=sync.connected
        )
        contact = GaugeMetricFamily(
            "trustmesh_agent_ca_last_contact_timestamp_seconds",
            "When the agent last heard from the CA on the Sync stream, unix seconds; absent before that",
        )
        if sync.last_contact_at is not None:
            contact.add_metric([], sync.last_contact_at.timestamp())
        yield contact
        yield CounterMetricFamily(
            "trustmesh_agent_ca_sync_errors", "Sync streams to the CA that failed", value=sync.errors
        )
        yield CounterMetricFamily(
            "trustmesh_agent_ca_sync_reconnects",
            "Sync streams to the CA opened again after the first",
            value=sync.reconnects,
        )
