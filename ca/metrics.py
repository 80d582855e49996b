"""Prometheus metrics of the CA (docs/observability.md lists them), on a registry of its own (so several
CAs in one test process, or a library user's own metrics, never collide).

Counters and histograms are updated by the use cases as things happen. What is state rather than
events — the authorities' expiry, the upstream chain, the Sync streams open — is read when
``/metrics`` is scraped (:class:`AuthorityCollector`, :class:`StreamCollector`), so it can never lag
behind or be forgotten by a code path that changes it.

Labels are bounded by design: authority IDs (a handful per trust domain), attestation methods the CA
has enabled (anything else a caller sends is counted as ``other``), error kinds (our error classes),
rotation steps. No label ever names an SVID, an agent or a caller.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.legacy_roots import legacy_crls
from ca.authority import AuthoritySet, AuthorityState

# How long a change takes to reach the Sync streams: milliseconds normally, seconds when the
# datastore is slow or thousands of agents are woken at once.
PUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Attestation methods the CA does not know are counted under this label value, never under their own.
OTHER_METHOD = "other"


def method_label(method: str, enabled: Collection[str]) -> str:
    """``method`` when the CA has it enabled, else :data:`OTHER_METHOD`: the method is caller input."""
    return method if method in enabled else OTHER_METHOD


def reason_label(err: BaseException) -> str:
    """The error's kind (``NotAuthorized``, ``ResourceExhausted``…): our own classes, a bounded set."""
    return type(err).__name__


# Who took a rotation step: the rotation task on its schedule, or an officer through the admin API.
SCHEDULE = "schedule"
OFFICER = "officer"


@dataclass
class RotationMetrics:
    """The rotation's outcomes: the steps the rotation task (:class:`ca.rotator.Rotator`) and officers
    (:class:`ca.authority_ops.AuthorityOperations`) took, and the task's failures and last success."""

    registry: CollectorRegistry
    steps: Counter = field(init=False)
    failures: Counter = field(init=False)
    last_success: Gauge = field(init=False)

    def __post_init__(self) -> None:
        self.steps = Counter(
            "trustmesh_rotation_steps",
            "Rotation steps taken: by the schedule (prepare, activate, recover, prune) or an officer (prepare, "
            "activate, rotate)",
            ["step", "kind", "trigger"],
            registry=self.registry,
        )
        self.failures = Counter(
            "trustmesh_rotation_failures",
            "Rotation checks that failed (a step, a CRL re-signing or reading the authorities); retried with backoff",
            registry=self.registry,
        )
        self.last_success = Gauge(
            "trustmesh_rotation_last_success_timestamp_seconds",
            "When the rotation task last completed a check (every step due applied, CRLs fresh)",
            registry=self.registry,
        )


@dataclass
class CaMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    x509_svids_issued: Counter = field(init=False)
    jwt_svids_issued: Counter = field(init=False)
    issuance_errors: Counter = field(init=False)
    x509_signing_seconds: Histogram = field(init=False)
    attestations: Counter = field(init=False)
    attestation_failures: Counter = field(init=False)
    sync_push_seconds: Histogram = field(init=False)
    rotation: RotationMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.x509_svids_issued = Counter(
            "trustmesh_x509_svids_issued", "X509-SVIDs signed and recorded", registry=self.registry
        )
        self.jwt_svids_issued = Counter("trustmesh_jwt_svids_issued", "JWT-SVIDs minted", registry=self.registry)
        self.issuance_errors = Counter(
            "trustmesh_issuance_errors", "Refused or failed SVID requests", ["kind", "reason"], registry=self.registry
        )
        self.x509_signing_seconds = Histogram(
            "trustmesh_x509_signing_seconds",
            "Time to check, sign and record one X509-SVID batch",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.attestations = Counter(
            "trustmesh_node_attestations",
            "Nodes attested (an agent SVID issued), by attestation method",
            ["method"],
            registry=self.registry,
        )
        self.attestation_failures = Counter(
            "trustmesh_node_attestation_failures",
            "Attestation steps refused or failed, by method and error kind",
            ["method", "reason"],
            registry=self.registry,
        )
        self.sync_push_seconds = Histogram(
            "trustmesh_sync_push_seconds",
            "Time from a committed change to the new state being written on an agent's Sync stream",
            buckets=PUSH_BUCKETS,
            registry=self.registry,
        )
        self.rotation = RotationMetrics(self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def add_collector(self, collector: Collector) -> None:
        """Register a collector read at scrape time (:class:`AuthorityCollector`, :class:`StreamCollector`)."""
        self.registry.register(collector)


class AuthorityCollector(Collector):
    """Absolute expiry timestamps of every authority and of the upstream certificates the prepared and
    active X.509 authorities chain to, read from the current snapshot at scrape time."""

    def __init__(self, current: Callable[[], AuthoritySet]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        authorities = self._current()
        expiry = GaugeMetricFamily(
            "trustmesh_authority_expiry_timestamp_seconds",
            "When each authority (X.509 CA certificate or JWT signing key) expires, unix seconds",
            labels=["authority_id", "kind", "state"],
        )
        for ca in authorities.x509:
            expiry.add_metric([ca.id, "x509", ca.state.value], ca.not_after.timestamp())
        for key in authorities.jwt:
            expiry.add_metric([key.key_id, "jwt", key.state.value], key.not_after.timestamp())
        upstream = GaugeMetricFamily(
            "trustmesh_upstream_expiry_timestamp_seconds",
            "When each upstream certificate (intermediate or root) above a prepared or active X.509 "
            "authority expires, unix seconds; absent with a self-signed CA",
            labels=["subject", "serial"],
        )
        seen: set[int] = set()
        for ca in authorities.x509:
            if ca.state not in (AuthorityState.PREPARED, AuthorityState.ACTIVE):
                continue
            for cert in ca.upstream_chain:
                if cert.serial_number not in seen:
                    seen.add(cert.serial_number)
                    upstream.add_metric(_certificate_labels(cert), cert.not_valid_after_utc.timestamp())
        yield expiry
        yield upstream


def _certificate_labels(cert: x509.Certificate) -> list[str]:
    return [cert.subject.rfc4514_string(), format(cert.serial_number, "x")]


class LegacyCrlCollector(Collector):
    """When each CRL in the ``[bridge] legacy_roots`` sets the CA serves is due for its next update, read
    from the sets at scrape time: past it, Envoy refuses every legacy server that CA issued."""

    def __init__(self, roots: Callable[[], Mapping[str, bytes]]) -> None:
        self._roots = roots

    def collect(self) -> Iterator[Metric]:
        due = GaugeMetricFamily(
            "trustmesh_legacy_crl_next_update_timestamp_seconds",
            "When each CRL in a [bridge] legacy_roots set is due for its next update, unix seconds; after it "
            "Envoy refuses every legacy server the CRL's issuer issued",
            labels=["set", "issuer"],
        )
        for name, pem in sorted(self._roots().items()):
            for crl in legacy_crls(pem):
                if crl.next_update_utc is not None:
                    due.add_metric([name, crl.issuer.rfc4514_string()], crl.next_update_utc.timestamp())
        yield due


class StreamCollector(Collector):
    """Sync streams open on this CA process and the distinct agents holding them, at scrape time."""

    def __init__(self, streams: Callable[[], int], agents: Callable[[], int]) -> None:
        self._streams = streams
        self._agents = agents

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("trustmesh_sync_streams", "Sync streams open on this CA process", value=self._streams())
        yield GaugeMetricFamily(
            "trustmesh_connected_agents",
            "Distinct agents holding a Sync stream to this CA process",
            value=self._agents(),
        )
