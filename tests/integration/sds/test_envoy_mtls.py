"""Two real Envoys get their SVIDs and SPIFFE validation contexts from our SDS server (DESIGN §4, §8).

A "client" Envoy takes plain HTTP on 127.0.0.1 and forwards it over mTLS to a "server" Envoy, whose
listener requires a client certificate and answers 200 with the peer's URI SAN in
``x-peer-spiffe-id``. Each Envoy talks to its own agent (an SDS server on a Unix socket fed by a
:class:`WorkloadCache`), as on two nodes. The bootstraps come from ``sds.envoy_bootstrap``.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from sds.cache import CacheSnapshot, WorkloadCache
from sds.envoy_bootstrap import Inbound, Outbound, envoy_bootstrap
from sds.sds_v3 import SecretDiscoveryService, add_sds_servicer
from spiffe_core.selectors import Selector
from tests.support.envoy import Envoy, one_request_per_upstream_connection, running_envoy
from tests.support.processes import wait_until
from tests.support.sds_snapshots import TestCa, snapshot

SERVER_ID = "spiffe://example.org/server"
CLIENT_ID = "spiffe://example.org/client"
FOREIGN_CLIENT_ID = "spiffe://other.example/client"
ENVOY_SELECTORS = frozenset({Selector("unix", "uid:0")})
BOUND = 10.0  # seconds: upper bound of every wait in this file

pytestmark = pytest.mark.e2e


class FixedAttestor:
    """Every caller of an agent here is that node's Envoy."""

    async def attest(self, context: Any) -> frozenset[Selector]:
        return ENVOY_SELECTORS


class Agents:
    """SDS servers on their own event loop in a thread, so the test may block on Envoy and HTTP."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sds-agents", daemon=True)
        self._thread.start()
        self._servers: list[grpc.aio.Server] = []

    def _run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=BOUND)

    def start(self, name: str, initial: CacheSnapshot) -> tuple[Path, WorkloadCache]:
        socket = self._workdir / f"{name}.sock"

        async def serve() -> WorkloadCache:
            cache = WorkloadCache(initial)
            server = grpc.aio.server()
            add_sds_servicer(SecretDiscoveryService(cache, FixedAttestor()), server)
            server.add_insecure_port(f"unix:{socket}")
            await server.start()
            self._servers.append(server)
            return cache

        cache: WorkloadCache = self._run(serve())
        return socket, cache

    def publish(self, cache: WorkloadCache, snap: CacheSnapshot) -> None:
        self._run(cache.publish(snap))

    def stop(self) -> None:
        async def stop_all() -> None:
            await asyncio.gather(*(s.stop(grace=None) for s in self._servers))

        try:
            self._run(stop_all())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=BOUND)
            self._loop.close()


@dataclass
class Mesh:
    agents: Agents
    server_cache: WorkloadCache
    client_cache: WorkloadCache
    server: Envoy
    client: Envoy
    url: str

    def get(self) -> httpx.Response:
        return httpx.get(self.url, timeout=5.0)


@pytest.fixture(scope="module")
def ca() -> TestCa:
    return TestCa.create("example.org")


@pytest.fixture(scope="module")
def foreign_ca() -> TestCa:
    return TestCa.create("other.example")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short path: Unix socket names are limited to ~100 bytes.
    with tempfile.TemporaryDirectory(prefix="mtls-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def agents(workdir: Path) -> Iterator[Agents]:
    running = Agents(workdir)
    try:
        yield running
    finally:
        running.stop()


def start_mesh(
    stack: ExitStack,
    agents: Agents,
    workdir: Path,
    server_snapshot: CacheSnapshot,
    client_snapshot: CacheSnapshot,
    api_type: str = "GRPC",
) -> Mesh:
    server_socket, server_cache = agents.start("server-agent", server_snapshot)
    client_socket, client_cache = agents.start("client-agent", client_snapshot)
    server_bootstrap = envoy_bootstrap(
        node_id="server",
        spiffe_id=SERVER_ID,
        trust_domain=server_snapshot.trust_domain,
        sds_socket=server_socket,
        admin_port=0,
        inbound=Inbound(port=0, allowed_peers=(CLIENT_ID, FOREIGN_CLIENT_ID)),
    )
    _use_sds_api(server_bootstrap, api_type)
    server = stack.enter_context(running_envoy(server_bootstrap, workdir, "server"))
    client_bootstrap = envoy_bootstrap(
        node_id="client",
        spiffe_id="default",
        trust_domain=client_snapshot.trust_domain,
        sds_socket=client_socket,
        admin_port=0,
        outbound=Outbound(port=0, upstream=f"127.0.0.1:{server.listener_port('inbound')}", upstream_id=SERVER_ID),
    )
    _use_sds_api(client_bootstrap, api_type)
    one_request_per_upstream_connection(client_bootstrap)
    client = stack.enter_context(running_envoy(client_bootstrap, workdir, "client"))
    url = f"http://127.0.0.1:{client.listener_port('outbound')}/"
    return Mesh(agents, server_cache, client_cache, server, client, url)


def _use_sds_api(node: Any, api_type: str) -> None:
    """Switch every SDS config source to ``api_type`` (GRPC: state of the world; DELTA_GRPC: incremental)."""
    if isinstance(node, dict):
        if node.get("api_type") == "GRPC":
            node["api_type"] = api_type
        for value in node.values():
            _use_sds_api(value, api_type)
    elif isinstance(node, list):
        for value in node:
            _use_sds_api(value, api_type)


def verify_failures(envoy: Envoy) -> int:
    """Peer certificates a listener of this Envoy refused (the SPIFFE validator's counter)."""
    return sum(v for k, v in envoy.counters("ssl.fail_verify_error").items() if k.startswith("listener."))


API_TYPES = [pytest.param("GRPC", id="sotw"), pytest.param("DELTA_GRPC", id="delta")]


@pytest.mark.parametrize("api_type", API_TYPES)
def test_request_over_mtls_reaches_the_server_with_the_client_spiffe_id(
    ca: TestCa, agents: Agents, workdir: Path, api_type: str
) -> None:
    with ExitStack() as stack:
        mesh = start_mesh(
            stack,
            agents,
            workdir,
            snapshot(ca, [ca.svid("/server", ["unix:uid:0"])]),
            snapshot(ca, [ca.svid("/client", ["unix:uid:0"])]),
            api_type,
        )

        response = mesh.get()

        assert response.status_code == 200
        assert response.headers["x-peer-spiffe-id"] == CLIENT_ID
        assert response.text == f"hello from {SERVER_ID}\n"


def test_server_refuses_a_client_from_an_unknown_trust_domain(
    ca: TestCa, foreign_ca: TestCa, agents: Agents, workdir: Path
) -> None:
    # The client trusts the server (its ROOTCA is example.org), but its own SVID is from a trust
    # domain the server neither owns nor federates with.
    with ExitStack() as stack:
        mesh = start_mesh(
            stack,
            agents,
            workdir,
            snapshot(ca, [ca.svid("/server", ["unix:uid:0"])]),
            snapshot(ca, [foreign_ca.svid("/client", ["unix:uid:0"])]),
        )

        response = mesh.get()

        assert response.status_code == 503
        assert verify_failures(mesh.server) == 1  # refused by the server, not by the client


def test_server_accepts_a_client_of_a_trust_domain_it_federates_with(
    ca: TestCa, foreign_ca: TestCa, agents: Agents, workdir: Path
) -> None:
    # Each side's agent holds the other's bundle for the entry that federates with it; each Envoy
    # then validates with ALL (its own and the federated trust domain, each with its own bundle).
    with ExitStack() as stack:
        mesh = start_mesh(
            stack,
            agents,
            workdir,
            snapshot(
                ca,
                [ca.svid("/server", ["unix:uid:0"], federates_with=["other.example"])],
                federated={"other.example": foreign_ca.bundle()},
            ),
            snapshot(
                foreign_ca,
                [foreign_ca.svid("/client", ["unix:uid:0"], federates_with=["example.org"])],
                federated={"example.org": ca.bundle()},
            ),
        )

        response = mesh.get()

        assert response.status_code == 200
        assert response.headers["x-peer-spiffe-id"] == FOREIGN_CLIENT_ID


def test_server_refuses_a_federated_trust_domains_certificate_claiming_one_of_its_own_ids(
    ca: TestCa, foreign_ca: TestCa, agents: Agents, workdir: Path
) -> None:
    # other.example's CA signs a certificate for spiffe://example.org/client (an allowed peer): the
    # server's SPIFFE validator checks it with example.org's bundle only, never other.example's.
    with ExitStack() as stack:
        mesh = start_mesh(
            stack,
            agents,
            workdir,
            snapshot(
                ca,
                [ca.svid("/server", ["unix:uid:0"], federates_with=["other.example"])],
                federated={"other.example": foreign_ca.bundle()},
            ),
            snapshot(
                foreign_ca,
                [foreign_ca.svid("/client", ["unix:uid:0"], federates_with=["example.org"], claiming=CLIENT_ID)],
                federated={"example.org": ca.bundle()},
            ),
        )

        response = mesh.get()

        assert response.status_code == 503
        assert verify_failures(mesh.server) == 1


def test_server_refuses_a_client_whose_svid_is_revoked(ca: TestCa, agents: Agents, workdir: Path) -> None:
    server_svid = ca.svid("/server", ["unix:uid:0"])
    client_svid = ca.svid("/client", ["unix:uid:0"])
    with ExitStack() as stack:
        mesh = start_mesh(
            stack,
            agents,
            workdir,
            snapshot(ca, [server_svid], crls=[ca.crl_der()]),  # a CRL that revokes nothing
            snapshot(ca, [client_svid]),
        )
        assert mesh.get().status_code == 200

        revoked = ca.crl_der([client_svid.cert_chain[0].serial_number])
        mesh.agents.publish(mesh.server_cache, snapshot(ca, [server_svid], version=2, crls=[revoked]))

        wait_until(lambda: mesh.get().status_code == 503, BOUND, "the server Envoy to refuse the revoked client")
        assert verify_failures(mesh.server) >= 1


class RequestLoop:
    """Sends requests back to back from a thread (bounded in count and time) and records statuses."""

    def __init__(self, mesh: Mesh, limit: int = 2000) -> None:
        self.statuses: list[int | str] = []
        self._mesh = mesh
        self._limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 3 * BOUND
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set() and len(self.statuses) < self._limit and time.monotonic() < deadline:
                try:
                    self.statuses.append(client.get(self._mesh.url).status_code)
                except httpx.HTTPError as err:
                    self.statuses.append(type(err).__name__)

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.statuses) >= count, BOUND, f"{count} requests")

    def stop(self) -> list[int | str]:
        self._stop.set()
        self._thread.join(timeout=BOUND)
        return self.statuses


@pytest.mark.parametrize("api_type", API_TYPES)
def test_rotation_changes_the_served_certificates_without_failed_requests(
    ca: TestCa, agents: Agents, workdir: Path, api_type: str
) -> None:
    with ExitStack() as stack:
        mesh = start_mesh(
            stack,
            agents,
            workdir,
            snapshot(ca, [ca.svid("/server", ["unix:uid:0"])]),
            snapshot(ca, [ca.svid("/client", ["unix:uid:0"])]),
            api_type,
        )
        new_server, new_client = ca.svid("/server", ["unix:uid:0"]), ca.svid("/client", ["unix:uid:0"])
        loop = RequestLoop(mesh)
        try:
            loop.wait_for(20)
            mesh.agents.publish(mesh.server_cache, snapshot(ca, [new_server], version=2))
            mesh.agents.publish(mesh.client_cache, snapshot(ca, [new_client], version=2))
            wait_until(
                lambda: (
                    mesh.server.certificate_serials() == {new_server.cert_chain[0].serial_number}
                    and mesh.client.certificate_serials() == {new_client.cert_chain[0].serial_number}
                ),
                BOUND,
                "both Envoys to serve the new SVIDs",
            )
            rotated_at = len(loop.statuses)
            loop.wait_for(rotated_at + 20)
        finally:
            statuses = loop.stop()

        assert statuses == [200] * len(statuses)
        assert mesh.get().headers["x-peer-spiffe-id"] == CLIENT_ID
        for envoy in (mesh.server, mesh.client):
            assert set(envoy.counters(".update_rejected").values()) == {0}
