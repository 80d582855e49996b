"""A silent network partition between agent and CA (packets dropped, no reset) ends the agent's Sync
stream within the keepalive bound, so the agent reports itself not ready and reconnects, instead of
waiting for changes that cannot come; and a healthy idle stream is never cut by the CA's ping policing.
The CA's and the agent's keepalive settings (spiffe_core.keepalive) are used as shipped, scaled down in
time: the fake CA serves with the CA's gRPC server arguments built by the same function."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sds.agent_svid import AgentIdentity, AgentSvidParams
from sds.cache import WorkloadCache
from sds.manager import AgentManager
from sds.node_client import NodeClient
from sds.persistence import AgentStore
from spiffe_core.bundle import Bundle
from spiffe_core.clock import SystemClock
from spiffe_core.keepalive import AGENT_KEEPALIVE, CA_KEEPALIVE, CA_MIN_PING_INTERVAL, Keepalive, server_options
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_manager import quick_retrying_manager
from tests.support.agent_pki import SigningCa
from tests.support.fake_node_server import SERVER_NAME, FakeNodeServer, FakeNodeServicer

TD = TrustDomain("example.org")
AGENT_ID = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")
TOKEN = "keepalive-join-token"
# The shipped cadences divided by SCALE: the agent pings after 1.5 s of silence (gRPC sends at most a
# ping a second), gives up 1 s later.
SCALE = 20
AGENT = Keepalive(AGENT_KEEPALIVE.interval / SCALE, AGENT_KEEPALIVE.timeout / 10)
CA_ALLOWS = CA_MIN_PING_INTERVAL / SCALE


class BlackHole:
    """A TCP relay in front of the CA's node API that can start dropping every byte both ways while
    keeping the connections open: what a dead NAT entry or a frozen peer looks like to the agent."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.dropping = False
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if not self.dropping:
                    sink.write(data)
                    await sink.drain()
        sink.close()


@dataclass
class Rig:
    server: FakeNodeServer
    hole: BlackHole
    manager: AgentManager
    cache: WorkloadCache
    client: NodeClient


@contextlib.asynccontextmanager
async def running(tmp_path: Path, ca: Keepalive, agent: Keepalive) -> AsyncIterator[Rig]:
    """A CA pinging its agents at ``ca`` and an agent pinging it at ``agent``, through a black hole."""
    servicer = FakeNodeServicer(SigningCa.create(TD, datetime.now(UTC)), join_tokens={TOKEN: "node-1"})
    servicer.add_entry("entry-web", WEB, AGENT_ID)
    server = FakeNodeServer(servicer, options=server_options(ca, min_ping_interval=CA_ALLOWS))
    await server.start()
    hole = BlackHole(server.node_api_port)
    await hole.start()
    client = NodeClient(
        trust_domain=TD,
        server_address=f"127.0.0.1:{hole.port}",
        attestation_address=server.attestation_address,
        server_name=SERVER_NAME,
        rpc_timeout=2.0,
        keepalive=agent,
    )
    identity = AgentIdentity(
        client=client,
        store=AgentStore(tmp_path, TD),
        params=AgentSvidParams(TD),
        join_token=lambda: TOKEN,
        bootstrap_bundle=Bundle(TD, (servicer.ca.cert,)),
        clock=SystemClock(),
    )
    await identity.start()
    manager, cache = quick_retrying_manager(client, identity, tmp_path, TD)
    try:
        yield Rig(server, hole, manager, cache, client)
    finally:
        await client.close()
        await hole.stop()
        await server.stop()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running(tmp_path, ca=CA_KEEPALIVE, agent=AGENT) as started:
        yield started


async def wait_for(condition: object, what: str, within: float) -> float:
    """Seconds until ``condition()`` held; fails after ``within``."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < within, f"{what} did not happen within {within}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_silent_partition_ends_the_sync_stream_within_the_keepalive_bound(rig: Rig) -> None:
    status = rig.manager.sync_status
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(rig.manager.run())
        await wait_for(lambda: status.connected, "the first Sync state", 5)
        rig.hole.dropping = True
        bound = AGENT.interval + AGENT.timeout
        noticed = await wait_for(lambda: not status.connected, "noticing the partition", bound + 2)
        assert status.errors >= 1
        assert status.last_error != ""
        rig.hole.dropping = False
        await wait_for(lambda: status.connected, "reconnecting once the network is back", 5)
        running.cancel()
    assert noticed >= AGENT.interval / 2  # it was the pings, not something that ends streams at once


async def test_an_idle_stream_pinging_at_the_agents_cadence_outlives_the_cas_ping_policing(rig: Rig) -> None:
    status = rig.manager.sync_status
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(rig.manager.run())
        await wait_for(lambda: status.connected, "the first Sync state", 5)
        reconnects = status.reconnects
        await asyncio.sleep(AGENT.interval * 6)  # six pings: three strikes would have been a GOAWAY
        assert (status.connected, status.reconnects, status.errors) == (True, reconnects, 0)
        running.cancel()


async def test_the_ca_ends_the_sync_stream_of_an_agent_gone_silent_within_its_keepalive_bound(tmp_path: Path) -> None:
    # The CA's own pings, scaled down; the agent's are the shipped ones, so the CA notices first.
    ca = Keepalive(CA_KEEPALIVE.interval / SCALE / 2, CA_KEEPALIVE.timeout / 20)
    async with running(tmp_path, ca=ca, agent=AGENT_KEEPALIVE) as rig, asyncio.TaskGroup() as tasks:
        servicer = rig.server.servicer
        agent = tasks.create_task(rig.manager.run())
        await wait_for(lambda: servicer.open_syncs == 1, "the agent's Sync stream", 5)
        rig.hole.dropping = True
        bound = ca.interval + ca.timeout
        dropped = await wait_for(lambda: servicer.open_syncs == 0, "the CA ending the stream", bound + 2)
        agent.cancel()
    assert dropped >= ca.interval / 2  # its pings did it, not something that ends streams at once
