"""The agent against a node API on real sockets: the node client, the agent's identity and the manager
talking TLS and mTLS to a fake CA (tests/support/fake_node_server.py) on 127.0.0.1 — attestation,
renewal, the Sync push, a CA outage and the reconnect after it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sds.agent_svid import AgentIdentity, AgentSvidParams
from sds.cache import CacheSnapshot, WorkloadCache
from sds.manager import AgentManager
from sds.node_client import NodeClient, SignedX509Svid, make_csr
from sds.persistence import AgentStore
from spiffe_core.bundle import Bundle
from spiffe_core.clock import SystemClock
from spiffe_core.errors import NotAuthorized, UpstreamUnavailable
from spiffe_core.jwt_svid import validate_jwt_svid
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import verify_x509_svid
from tests.support.agent_manager import quick_retrying_manager
from tests.support.agent_pki import SigningCa
from tests.support.fake_node_server import SERVER_NAME, FakeNodeServer, FakeNodeServicer

TD = TrustDomain("example.org")
AGENT_ID = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")
DB = SpiffeId.parse("spiffe://example.org/db")
TOKEN = "7c1e0f9a-join-token"
# Every wait is bounded: a push must reach the cache well within DESIGN §1's 2 s; a reconnect after an
# outage within the (test-sized) backoff.
DEADLINE = 5.0


@dataclass
class Agent:
    client: NodeClient
    identity: AgentIdentity
    cache: WorkloadCache
    manager: AgentManager


@pytest.fixture
async def server() -> AsyncIterator[FakeNodeServer]:
    servicer = FakeNodeServicer(SigningCa.create(TD, datetime.now(UTC)), join_tokens={TOKEN: "node-1"})
    fake = FakeNodeServer(servicer)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def new_client(server: FakeNodeServer, rpc_timeout: float = 2.0) -> NodeClient:
    return NodeClient(
        trust_domain=TD,
        server_address=server.node_api_address,
        attestation_address=server.attestation_address,
        server_name=SERVER_NAME,
        rpc_timeout=rpc_timeout,
    )


def new_identity(
    server: FakeNodeServer, client: NodeClient, data_dir: Path, token: str | None = TOKEN
) -> AgentIdentity:
    return AgentIdentity(
        client=client,
        store=AgentStore(data_dir, TD),
        params=AgentSvidParams(TD),
        join_token=lambda: token,
        bootstrap_bundle=Bundle(TD, (server.servicer.ca.cert,)),
        clock=SystemClock(),
    )


@pytest.fixture
async def agent(server: FakeNodeServer, tmp_path: Path) -> AsyncIterator[Agent]:
    client = new_client(server)
    identity = new_identity(server, client, tmp_path)
    await identity.start()
    manager, cache = quick_retrying_manager(client, identity, tmp_path, TD)
    try:
        yield Agent(client, identity, cache, manager)
    finally:
        await client.close()


async def snapshot_where(cache: WorkloadCache, condition: Callable[[CacheSnapshot], bool]) -> CacheSnapshot:
    async with asyncio.timeout(DEADLINE):
        async for snapshot in cache.subscribe():
            if condition(snapshot):
                return snapshot
    raise AssertionError("unreachable: subscribe() never ends")


def ids(snapshot: CacheSnapshot) -> list[SpiffeId]:
    return [svid.spiffe_id for svid in snapshot.svids]


async def test_attest_gives_the_agent_id_the_ca_assigned(agent: Agent) -> None:
    credentials = agent.identity.get_current()
    assert credentials.svid.spiffe_id == AGENT_ID
    assert verify_x509_svid(credentials.svid.cert_chain, credentials.bundle, datetime.now(UTC))[0] == AGENT_ID


async def test_attest_with_a_used_token_is_not_authorized(server: FakeNodeServer, agent: Agent, tmp_path: Path) -> None:
    other = new_client(server)
    try:
        with pytest.raises(NotAuthorized) as caught:
            await new_identity(server, other, tmp_path / "other").start()
    finally:
        await other.close()
    assert str(caught.value) == (
        f"node API Attest at {server.attestation_address} refused: "
        "join token unknown, used or expired; ask an operator for a new join token"
    )


async def test_renew_over_mtls_gives_a_new_svid_for_a_new_key(server: FakeNodeServer, agent: Agent) -> None:
    before = agent.identity.get_current().svid
    after = (await agent.identity.renew()).svid
    assert after.spiffe_id == AGENT_ID
    assert after.leaf.serial_number != before.leaf.serial_number
    assert after.leaf.public_key() != before.leaf.public_key()
    assert server.servicer.calls["RenewAgent"] == 1


async def test_a_restarted_agent_uses_its_saved_svid_while_the_ca_is_down(
    server: FakeNodeServer, agent: Agent, tmp_path: Path
) -> None:
    await server.stop()
    client = new_client(server)
    try:
        restarted = await new_identity(server, client, tmp_path, token=None).start()
    finally:
        await client.close()
    assert restarted.svid.leaf == agent.identity.get_current().svid.leaf


async def test_attest_when_the_ca_is_down_is_upstream_unavailable(server: FakeNodeServer) -> None:
    await server.stop()
    client = new_client(server)
    try:
        with pytest.raises(UpstreamUnavailable, match=r"^node API Attest at 127\.0\.0\.1:\d+ is unavailable"):
            await client.attest(
                Bundle(TD, (server.servicer.ca.cert,)),
                "join_token",
                TOKEN.encode(),
                make_csr(generate_private_key(KeyType.EC_P256)),
            )
    finally:
        await client.close()


async def test_a_first_start_before_the_ca_is_up_attests_once_it_is(server: FakeNodeServer, tmp_path: Path) -> None:
    await server.stop()
    client = new_client(server)
    try:
        starting = asyncio.create_task(new_identity(server, client, tmp_path).start())
        await asyncio.sleep(1.5)
        assert not starting.done(), "the agent must wait for its CA, not give up"
        await server.start()  # the same ports
        credentials = await asyncio.wait_for(starting, 30)
    finally:
        await client.close()
    assert credentials.svid.spiffe_id == AGENT_ID


async def test_sync_push_reaches_the_cache_and_survives_a_ca_outage(server: FakeNodeServer, agent: Agent) -> None:
    servicer = server.servicer
    servicer.add_entry("entry-web", WEB, AGENT_ID)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(agent.manager.run())

        first = await snapshot_where(agent.cache, lambda s: ids(s) == [WEB])
        svid = first.svids[0]
        assert verify_x509_svid(svid.cert_chain, servicer.current_bundle(), datetime.now(UTC))[0] == WEB
        assert svid.cert_chain[0].public_key() == svid.private_key.public_key()

        servicer.add_entry("entry-db", DB, AGENT_ID)
        await servicer.push()
        pushed = await snapshot_where(agent.cache, lambda s: ids(s) == [WEB, DB])
        assert pushed.svids[0] == svid  # the web SVID is not signed again

        await server.stop()
        await asyncio.sleep(0.3)  # the stream fails and the manager retries a few times
        assert agent.cache.get_snapshot() == pushed

        servicer.entries = [e for e in servicer.entries if e.id != "entry-web"]
        await server.start()
        await servicer.push()
        after = await snapshot_where(agent.cache, lambda s: ids(s) == [DB])
        assert after.svids[0] == pushed.svids[1]
        assert servicer.calls["SignX509Svids"] == 2  # one batch per change, none on reconnect
        running.cancel()


async def test_a_new_bundle_from_sync_replaces_the_channel_and_signing_goes_on(
    server: FakeNodeServer, agent: Agent
) -> None:
    servicer = server.servicer
    servicer.add_entry("entry-web", WEB, AGENT_ID)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(agent.manager.run())
        await snapshot_where(agent.cache, lambda s: ids(s) == [WEB])
        generation = agent.client.channel_generation
        servicer.bundle = servicer.ca.bundle(sequence=2)
        await servicer.push()
        rotated = await snapshot_where(agent.cache, lambda s: s.bundle is not None and s.bundle.sequence == 2)
        assert agent.identity.get_current().bundle == rotated.bundle
        assert agent.client.channel_generation == generation + 1  # the Sync stream's end is the agent's
        servicer.add_entry("entry-db", DB, AGENT_ID)
        await servicer.push()
        await snapshot_where(agent.cache, lambda s: ids(s) == [WEB, DB])
        assert servicer.calls["Sync"] == 2  # reconnected once, with the new bundle
        running.cancel()


async def signing_held(server: FakeNodeServer) -> asyncio.Event:
    """Hold the fake CA's SignX509Svids answers until the returned event is set."""
    gate = asyncio.Event()
    server.servicer.signing_gate = gate
    return gate


async def until_signing_waits(servicer: FakeNodeServicer) -> None:
    await asyncio.wait_for(servicer.signing_waits.wait(), DEADLINE)


async def call_held_at_the_ca(
    server: FakeNodeServer, client: NodeClient
) -> tuple[asyncio.Event, asyncio.Task[list[SignedX509Svid]]]:
    """A SignX509Svids call for WEB that the fake CA holds until the returned event is set."""
    server.servicer.add_entry("entry-web", WEB, AGENT_ID)
    gate = await signing_held(server)
    csr = make_csr(generate_private_key(KeyType.EC_P256))
    call = asyncio.create_task(client.sign_x509_svids([("entry-web", csr)]))
    await until_signing_waits(server.servicer)
    return gate, call


async def test_a_signing_call_in_flight_when_the_credentials_change_still_gets_its_answer(
    server: FakeNodeServer, agent: Agent
) -> None:
    """The old channel stays until the call's own deadline: the CA answers 5.5 s after the swap, within
    a 6 s deadline (a fixed 5 s grace, as before, cancelled the call and with it the task waiting)."""
    client = new_client(server, rpc_timeout=6.0)
    client.use_credentials(agent.identity.get_current())
    try:
        gate, call = await call_held_at_the_ca(server, client)
        client.use_credentials(agent.identity.get_current())  # a renewed SVID or a new bundle
        await asyncio.sleep(5.5)
        gate.set()
        (signed,) = await asyncio.wait_for(call, DEADLINE)
    finally:
        await client.close()
    assert verify_x509_svid(signed.cert_chain, server.servicer.ca.bundle(), datetime.now(UTC))[0] == WEB


async def test_a_signing_call_cut_off_by_closing_the_client_fails_as_upstream_unavailable(
    server: FakeNodeServer, agent: Agent
) -> None:
    gate, call = await call_held_at_the_ca(server, agent.client)
    await agent.client.close()
    gate.set()
    with pytest.raises(UpstreamUnavailable, match=r"SignX509Svids .* was cut off"):
        await asyncio.wait_for(call, DEADLINE)  # a failure to retry, not a cancellation of the caller


async def test_the_svid_task_retries_a_signing_call_that_was_cut_off(server: FakeNodeServer, agent: Agent) -> None:
    servicer = server.servicer
    servicer.add_entry("entry-web", WEB, AGENT_ID)
    gate = await signing_held(server)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(agent.manager.run())
        await until_signing_waits(servicer)
        await agent.client.close()  # cuts the call off; the client opens a new channel for the next
        gate.set()
        await snapshot_where(agent.cache, lambda s: ids(s) == [WEB])
        assert servicer.calls["SignX509Svids"] >= 2
        running.cancel()


async def test_jwt_svids_are_minted_by_the_ca_and_reused(server: FakeNodeServer, agent: Agent) -> None:
    servicer = server.servicer
    servicer.add_entry("entry-web", WEB, AGENT_ID)
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(agent.manager.run())
        await snapshot_where(agent.cache, lambda s: ids(s) == [WEB])
        token = await agent.manager.fetch_jwt_svid(WEB, ["db"])
        again = await agent.manager.fetch_jwt_svid(WEB, ["db"])
        running.cancel()
    assert again == token
    assert servicer.calls["MintJwtSvid"] == 1
    svid = validate_jwt_svid(token, audience=["db"], bundle_source=servicer.current_bundle(), now=datetime.now(UTC))
    assert svid.spiffe_id == WEB
    assert svid.expiry - datetime.now(UTC) <= timedelta(minutes=5)


async def test_a_federated_bundle_refresh_answers_the_cas_copy_of_that_trust_domain(
    server: FakeNodeServer, agent: Agent
) -> None:
    partner = TrustDomain("partner.example")
    assert await agent.client.refresh_federated_bundle(partner, "new-key") is None  # the CA holds none yet
    fetched = SigningCa.create(partner, datetime.now(UTC)).bundle(sequence=4)
    server.servicer.federated_bundles["partner.example"] = fetched
    assert await agent.client.refresh_federated_bundle(partner, "new-key") == fetched
    assert server.servicer.calls["RefreshFederatedBundle"] == 2
