"""The node API's metrics as an operator scrapes them (issue 11 "Metrics and alerts"): attestations and
issuance refusals counted with bounded labels, Sync streams and connected agents, and the time a change
takes to reach an agent's stream. A real node API over SQLite (test_node_api.py's ``ca``)."""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client import generate_latest

from ca.metrics import StreamCollector
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId
from tests.integration.ca.test_node_api import (
    NODE_1,
    NODE_2,
    PUSH_DEADLINE,
    RPC_TIMEOUT,
    WEB,
    RunningCa,
    attest,
    attested_agent,
    channel,
    csr_for,
    refused,
)
from tests.support.processes import wait_until
from wire import node_pb2, node_pb2_grpc


def sample(ca: RunningCa, name: str, labels: dict[str, str] | None = None) -> float:
    value = ca.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def test_an_attestation_is_counted_by_method(ca: RunningCa) -> None:
    await attested_agent(ca)
    assert sample(ca, "trustmesh_node_attestations_total", {"method": "join_token"}) == 1
    assert sample(ca, "trustmesh_x509_svids_issued_total") >= 1


async def test_a_refused_join_token_is_counted_as_a_failure_with_its_reason(ca: RunningCa) -> None:
    await refused(attest(ca, "not-a-token-anyone-generated"))
    labels = {"method": "join_token", "reason": "NotAuthorized"}
    assert sample(ca, "trustmesh_node_attestation_failures_total", labels) == 1
    assert sample(ca, "trustmesh_node_attestations_total", {"method": "join_token"}) == 0


async def test_a_method_the_ca_does_not_know_is_counted_as_other_never_by_its_name(ca: RunningCa) -> None:
    async with channel(ca, ca.attestation_port) as ch:
        key = generate_private_key(KeyType.EC_P256)
        request = node_pb2.AttestRequest(method="made-up-by-a-caller", payload=b"x", csr=csr_for(key))
        await refused(node_pb2_grpc.NodeStub(ch).Attest(request, timeout=RPC_TIMEOUT))
    labels = {"method": "other", "reason": "InvalidArgument"}
    assert sample(ca, "trustmesh_node_attestation_failures_total", labels) == 1
    assert b"made-up-by-a-caller" not in generate_latest(ca.metrics.registry)


async def test_items_for_another_agents_entries_are_counted_as_issuance_errors(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    theirs = ca.entry(SpiffeId.parse("spiffe://example.org/db"), NODE_2)
    request = node_pb2.SignX509SvidsRequest(
        requests=[
            node_pb2.X509SvidRequest(entry_id=theirs.id, csr=csr_for(generate_private_key(KeyType.EC_P256)))
            for _ in range(3)
        ]
    )
    async with channel(ca, ca.node_api_port, agent) as ch:
        await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    assert sample(ca, "trustmesh_issuance_errors_total", {"kind": "x509", "reason": "NotAuthorized"}) == 3


async def test_a_jwt_svid_for_another_agents_entry_is_counted_as_an_issuance_error(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    theirs = ca.entry(WEB, NODE_2)
    async with channel(ca, ca.node_api_port, agent) as ch:
        request = node_pb2.MintJwtSvidRequest(entry_id=theirs.id, audience=["payments"])
        error = await refused(node_pb2_grpc.NodeStub(ch).MintJwtSvid(request, timeout=RPC_TIMEOUT))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert sample(ca, "trustmesh_issuance_errors_total", {"kind": "jwt", "reason": "NotAuthorized"}) == 1


async def test_open_sync_streams_and_connected_agents_are_gauged(ca: RunningCa) -> None:
    ca.metrics.add_collector(StreamCollector(ca.hub.subscriber_count, ca.hub.agent_count))
    agent = await attested_agent(ca)
    async with channel(ca, ca.node_api_port, agent) as ch:
        streams = [node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest()) for _ in range(2)]
        for stream in streams:
            await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        assert sample(ca, "trustmesh_sync_streams") == 2
        assert sample(ca, "trustmesh_connected_agents") == 1
        for stream in streams:
            stream.cancel()
    await asyncio.to_thread(wait_until, lambda: sample(ca, "trustmesh_sync_streams") == 0, 5, "the streams to close")
    assert sample(ca, "trustmesh_connected_agents") == 0


async def test_a_pushed_change_is_timed_from_commit_to_stream(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    async with channel(ca, ca.node_api_port, agent) as ch:
        stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
        await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        assert sample(ca, "trustmesh_sync_push_seconds_count") == 0, "the first state is no push"
        await asyncio.to_thread(ca.entry, WEB, NODE_1)
        await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        stream.cancel()
    assert sample(ca, "trustmesh_sync_push_seconds_count") == 1
    assert 0 < sample(ca, "trustmesh_sync_push_seconds_sum") < PUSH_DEADLINE
