"""Prometheus metrics of the CA, on a registry of its own (so several CAs in one test process, or a
library user's own metrics, never collide)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class CaMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    x509_svids_issued: Counter = field(init=False)
    jwt_svids_issued: Counter = field(init=False)
    issuance_errors: Counter = field(init=False)
    x509_signing_seconds: Histogram = field(init=False)

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
