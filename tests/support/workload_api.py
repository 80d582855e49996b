"""Serving the SPIFFE Workload API in a test: a JWT authority whose key a fake minter signs with, and
the real endpoint (public socket → proxy → gRPC server) around a cache the test publishes into."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from sds.attestor import ProcessAttestor
from sds.cache import CacheSnapshot, WorkloadCache
from sds.metrics import AgentMetrics
from sds.peer_endpoint import AttestedEndpoint
from sds.workload_api import FederatedBundleRefresher, JwtSvidMinter, WorkloadApiService
from spiffe_core.bundle import Bundle, JwtAuthority
from spiffe_core.clock import Clock, SystemClock
from spiffe_core.jwt_svid import mint_jwt_svid
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from wire import workload_pb2_grpc

SECURITY_HEADER = (("workload.spiffe.io", "true"),)


@dataclass(frozen=True, slots=True)
class TestJwtKey:
    """A JWT authority of one trust domain: the key ID it publishes and the private key it signs with."""

    trust_domain: TrustDomain
    key_id: str
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    __test__ = False  # not a pytest test class

    @classmethod
    def create(cls, trust_domain: TrustDomain, key_id: str = "jwt-key-1") -> TestJwtKey:
        return cls(trust_domain, key_id, ec.generate_private_key(ec.SECP256R1()))

    @property
    def authority(self) -> JwtAuthority:
        return JwtAuthority(self.key_id, self.key.public_key())

    def publish_in(self, bundle: Bundle) -> Bundle:
        return bundle.with_changes(jwt_authorities=(*bundle.jwt_authorities, self.authority))

    def mint(self, spiffe_id: SpiffeId, audience: Sequence[str], now: datetime | None = None) -> str:
        issued = now or datetime.now(UTC)
        return mint_jwt_svid(
            spiffe_id=spiffe_id,
            audience=audience,
            private_key=self.key,
            key_id=self.key_id,
            expires_at=issued + timedelta(minutes=5),
            issued_at=issued,
        )


@dataclass
class FakeJwtMinter:
    """The agent manager's part of FetchJWTSVID: signs locally with a test key instead of asking a CA.
    Set ``error`` to make every call raise it."""

    key: TestJwtKey
    error: Exception | None = None
    calls: list[tuple[SpiffeId, tuple[str, ...]]] = field(default_factory=list)

    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: Sequence[str]) -> str:
        self.calls.append((spiffe_id, tuple(audience)))
        if self.error is not None:
            raise self.error
        return self.key.mint(spiffe_id, audience)


@dataclass
class FakeBundleRefresher:
    """The agent manager's part of ValidateJWTSVID's retry on an unknown key: answers ``bundle`` (or
    raises ``error``) instead of asking a CA, and records each call."""

    bundle: Bundle | None = None
    error: Exception | None = None
    calls: list[tuple[TrustDomain, str]] = field(default_factory=list)

    async def refresh_federated_bundle(self, trust_domain: TrustDomain, key_id: str) -> Bundle | None:
        self.calls.append((trust_domain, key_id))
        if self.error is not None:
            raise self.error
        return self.bundle


def with_jwt_key(snapshot: CacheSnapshot, key: TestJwtKey) -> CacheSnapshot:
    """The snapshot with ``key`` published in its own bundle."""
    assert snapshot.bundle is not None
    return replace(snapshot, bundle=key.publish_in(snapshot.bundle))


@contextmanager
def socket_directory() -> Iterator[Path]:
    """A short temporary directory: Unix socket paths are limited to 107 bytes, pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="wl-", dir="/tmp") as path:
        yield Path(path)


@asynccontextmanager
async def serve_workload_api(
    cache: WorkloadCache,
    minter: JwtSvidMinter,
    socket: Path,
    clock: Clock | None = None,
    process_attestor: ProcessAttestor | None = None,
    bundle_refresher: FederatedBundleRefresher | None = None,
    metrics: AgentMetrics | None = None,
) -> AsyncIterator[AttestedEndpoint]:
    """The Workload API on ``socket`` through the attesting proxy, until the block ends."""
    endpoint = AttestedEndpoint(socket, process_attestor=process_attestor)
    service = WorkloadApiService(
        cache, endpoint.attestor, minter, clock or SystemClock(), bundle_refresher=bundle_refresher, metrics=metrics
    )
    endpoint.add_servicer(lambda server: workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(service, server))
    async with endpoint:
        yield endpoint
