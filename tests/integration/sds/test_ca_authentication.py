"""The agent authenticates its CA by SPIFFE ID, not by DNS name (sds/ca_channel.py), on real sockets.

An impostor is a node API server on 127.0.0.1 holding an X509-SVID of the agent's own trust domain,
signed by the very CA whose root the agent trusts and carrying the CA's DNS name — exactly what passed
as the CA while gRPC checked only the name. It would attest the agent with its own bundle and sign
whatever the agent asks. The agent must refuse it before any RPC reaches it, name the ID it saw, and
keep working with the real CA."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sds.agent_svid import AgentIdentity, AgentSvidParams
from sds.ca_channel import CaNotTrusted
from sds.cache import CacheSnapshot
from sds.node_client import NodeClient, make_csr
from sds.persistence import AgentStore
from spiffe_core.backoff import DEFAULT_LOG_INTERVAL_SECONDS
from spiffe_core.bundle import Bundle
from spiffe_core.clock import SystemClock
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_manager import quick_retrying_manager
from tests.support.agent_pki import SigningCa
from tests.support.fake_node_server import SERVER_NAME, FakeNodeServer, FakeNodeServicer, serving_svid

TD = TrustDomain("example.org")
AGENT_ID = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")
SERVER_ID = "spiffe://example.org/trustmesh/server"
TOKEN = "7c1e0f9a-join-token"
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ca() -> SigningCa:
    return SigningCa.create(TD, NOW)


async def started(servicer: FakeNodeServicer, impostor_id: SpiffeId | None = None) -> FakeNodeServer:
    identity = None if impostor_id is None else serving_svid(servicer.ca, SERVER_NAME, impostor_id)
    server = FakeNodeServer(servicer, identity)
    await server.start()
    return server


@pytest.fixture
async def real(ca: SigningCa) -> AsyncIterator[FakeNodeServer]:
    server = await started(FakeNodeServicer(ca, join_tokens={TOKEN: "node-1"}))
    yield server
    await server.stop()


@pytest.fixture(params=[WEB, AGENT_ID, SpiffeId.parse("spiffe://example.org/trustmesh/server2")], ids=str)
async def impostor(request: pytest.FixtureRequest, ca: SigningCa) -> AsyncIterator[FakeNodeServer]:
    """A server of the same CA, with the CA's DNS name, that would accept the join token too."""
    server = await started(FakeNodeServicer(ca, join_tokens={TOKEN: "node-1"}), request.param)
    yield server
    await server.stop()


def client(node_api: FakeNodeServer, attestation: FakeNodeServer) -> NodeClient:
    return NodeClient(
        trust_domain=TD,
        server_address=node_api.node_api_address,
        attestation_address=attestation.attestation_address,
        server_name=SERVER_NAME,
        rpc_timeout=2.0,
    )


def identity(node_client: NodeClient, ca: SigningCa, data_dir: Path) -> AgentIdentity:
    return AgentIdentity(
        client=node_client,
        store=AgentStore(data_dir, TD),
        params=AgentSvidParams(TD),
        join_token=lambda: TOKEN,
        bootstrap_bundle=Bundle(TD, (ca.cert,)),
        clock=SystemClock(),
    )


def refusal(address: str, presented: SpiffeId) -> str:
    return re.escape(
        f"the CA at {address} presented SPIFFE ID {presented}, not {SERVER_ID}; the agent talks only to its CA "
        "— another server answers on that address (check server_address and attestation_address)"
    )


def presented_id(server: FakeNodeServer) -> SpiffeId:
    return server._identity.spiffe_id


async def test_attestation_refuses_an_impostor_with_the_cas_dns_name(
    ca: SigningCa, impostor: FakeNodeServer, tmp_path: Path
) -> None:
    node_client = client(impostor, impostor)
    try:
        with pytest.raises(CaNotTrusted, match="^" + refusal(impostor.attestation_address, presented_id(impostor))):
            await identity(node_client, ca, tmp_path).start()
    finally:
        await node_client.close()
    assert impostor.servicer.calls == Counter()  # not one RPC reached it
    assert AgentStore(tmp_path, TD).load_agent() is None  # nothing it could have said was kept


async def test_node_api_calls_refuse_an_impostor_and_send_it_nothing(
    ca: SigningCa, real: FakeNodeServer, impostor: FakeNodeServer, tmp_path: Path
) -> None:
    attested = client(real, real)
    try:
        credentials = await identity(attested, ca, tmp_path).start()
    finally:
        await attested.close()
    misled = client(impostor, real)
    misled.use_credentials(credentials)
    expected = "^" + refusal(impostor.node_api_address, presented_id(impostor))
    try:
        with pytest.raises(CaNotTrusted, match=expected):
            await misled.renew(b"csr")
        with pytest.raises(CaNotTrusted, match=expected):
            await misled.sign_x509_svids([("entry-web", b"csr")])
        with pytest.raises(CaNotTrusted, match=expected):
            await misled.mint_jwt_svid("entry-web", ["db"])
        with pytest.raises(CaNotTrusted, match=expected):
            await anext(misled.sync())
    finally:
        await misled.close()
    assert impostor.servicer.calls == Counter()


async def test_the_manager_takes_nothing_from_an_impostor_and_says_why(
    ca: SigningCa, real: FakeNodeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rogue = await started(FakeNodeServicer(ca), WEB)
    rogue.servicer.add_entry("entry-web", WEB, AGENT_ID)
    attested = client(real, real)
    try:
        agent = identity(attested, ca, tmp_path)
        await agent.start()
    finally:
        await attested.close()
    misled = client(rogue, real)
    agent._client = misled  # the same identity, now pointed at the impostor
    misled.use_credentials(agent.get_current())
    manager, cache = quick_retrying_manager(misled, agent, tmp_path, TD)
    expected = r"sync stream with the CA failed \(" + refusal(rogue.node_api_address, WEB) + r"\); reconnecting in .*"

    def refused() -> bool:
        return any(re.fullmatch(expected, message) for message in caplog.messages)

    try:
        with caplog.at_level(logging.WARNING, logger="sds.manager"):
            running = asyncio.create_task(manager.run())
            # A loaded machine may first time out connecting; that line is logged and the manager holds
            # back the next sync failure for its 10 s log interval, so allow one interval and a margin.
            async with asyncio.timeout(DEFAULT_LOG_INTERVAL_SECONDS + 5):
                while not refused():  # noqa: ASYNC110 - the log is polled, nothing signals it
                    await asyncio.sleep(0.05)
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    finally:
        await misled.close()
        await rogue.stop()
    assert cache.get_snapshot() == CacheSnapshot(TD)
    assert rogue.servicer.calls == Counter()
    assert refused(), caplog.messages


async def test_a_server_whose_certificate_does_not_chain_to_the_bundle_is_not_trusted(
    ca: SigningCa, tmp_path: Path
) -> None:
    stranger = await started(FakeNodeServicer(SigningCa.create(TD, NOW), join_tokens={TOKEN: "node-1"}))
    node_client = client(stranger, stranger)
    try:
        with pytest.raises(
            CaNotTrusted,
            match="^"
            + re.escape(
                f"the CA at {stranger.attestation_address} presented a certificate that is not a valid X509-SVID of "
                f"example.org (X509-SVID {SERVER_ID} does not chain to the bundle of example.org at "
            )
            + r".*"
            + re.escape(
                f"); only {SERVER_ID} chained to the agent's bundle is accepted as the CA — check server_address "
                "and attestation_address, and trust_bundle_path on first contact"
            )
            + "$",
        ):
            await identity(node_client, ca, tmp_path).start()
    finally:
        await node_client.close()
        await stranger.stop()
    assert stranger.servicer.calls == Counter()


async def test_the_real_ca_is_accepted_on_both_listeners(ca: SigningCa, real: FakeNodeServer, tmp_path: Path) -> None:
    node_client = client(real, real)
    try:
        credentials = await identity(node_client, ca, tmp_path).start()
        assert credentials.svid.spiffe_id == AGENT_ID
        renewed = await node_client.renew(make_csr(credentials.svid.private_key))
    finally:
        await node_client.close()
    assert renewed[0].public_key() == credentials.svid.leaf.public_key()
    assert real.servicer.calls == Counter({"Attest": 1, "RenewAgent": 1})
