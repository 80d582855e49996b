"""The node API's limits as an agent meets them (ca/ratelimit.py applied at ca/node_api.py): the real CA
service on SQLite, the real gRPC server with both TLS listeners, raw clients from the generated stubs, and
a hand-moved monotonic clock for the token buckets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from ca.ratelimit import NodeApiGuard, NodeApiLimits, Rate
from ca.store import IssuedCertificateRepository
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId
from tests.integration.ca.test_node_api import (
    NODE_1,
    SERVER_NAME,
    Agent,
    RunningCa,
    attested_agent,
    channel,
    csr_for,
    details,
    refused,
    running_node_api,
)
from tests.support.store import TESTER
from wire import node_pb2, node_pb2_grpc

RPC_TIMEOUT = 10.0
# No refill within a test unless the test moves the monotonic clock.
SLOW = 0.01


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


StartCa = Callable[..., AbstractAsyncContextManager[RunningCa]]


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def start_ca(tmp_path: Path, monotonic: Monotonic) -> StartCa:
    @asynccontextmanager
    async def start(limits: NodeApiLimits, attestation_address: str = "127.0.0.1:0") -> AsyncIterator[RunningCa]:
        guard = NodeApiGuard(limits, monotonic=monotonic)
        async with running_node_api(tmp_path, guard=guard, attestation_address=attestation_address) as ca:
            yield ca

    return start


def sign_request(entry_ids: list[str]) -> node_pb2.SignX509SvidsRequest:
    key = generate_private_key(KeyType.EC_P256)
    csr = csr_for(key)
    return node_pb2.SignX509SvidsRequest(
        requests=[node_pb2.X509SvidRequest(entry_id=entry_id, csr=csr) for entry_id in entry_ids]
    )


async def sign(ca: RunningCa, agent: Agent, entry_ids: list[str]) -> node_pb2.SignX509SvidsResponse:
    async with channel(ca, ca.node_api_port, agent) as ch:
        response: node_pb2.SignX509SvidsResponse = await node_pb2_grpc.NodeStub(ch).SignX509Svids(
            sign_request(entry_ids), timeout=RPC_TIMEOUT
        )
    return response


def entries_of(ca: RunningCa, agent: Agent, count: int) -> list[str]:
    return [ca.entry(SpiffeId.parse(f"spiffe://example.org/w{i}"), agent.spiffe_id).id for i in range(count)]


def recorded(ca: RunningCa, agent_entries: int) -> int:
    with ca.database.transaction() as session:
        certs = IssuedCertificateRepository(session)
        return sum(
            len(certs.list_by_spiffe_id(SpiffeId.parse(f"spiffe://example.org/w{i}"))) for i in range(agent_entries)
        )


def retry_after_ms(error: grpc.aio.AioRpcError) -> int:
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[arg-type]
    return int(trailers["retry-after-ms"])


# --- SignX509Svids: batch size --------------------------------------------------------------------------


async def test_a_batch_over_the_maximum_is_refused_naming_the_limit(start_ca: StartCa) -> None:
    async with start_ca(NodeApiLimits(max_batch_size=3, signing=Rate(SLOW, 10))) as ca:
        agent = await attested_agent(ca)
        ids = entries_of(ca, agent, 4)
        error = await refused(sign(ca, agent, ids))
        assert (error.code(), details(error)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "SignX509Svids asks for 4 X509-SVIDs; the CA signs at most 3 per call (node_api.max_batch_size); "
            "split the batch into calls of at most that many",
        )
        assert recorded(ca, 4) == 0
        response = await sign(ca, agent, ids[:3])
        assert [svid.error for svid in response.svids] == ["", "", ""]


# --- SignX509Svids: signing rate per agent ----------------------------------------------------------------


async def test_an_agent_over_its_signing_rate_is_resource_exhausted_and_others_are_not(
    start_ca: StartCa, monotonic: Monotonic
) -> None:
    async with start_ca(NodeApiLimits(max_batch_size=4, signing=Rate(2, 4))) as ca:
        greedy = await attested_agent(ca, "node-1")
        other = await attested_agent(ca, "node-2")
        greedy_ids = entries_of(ca, greedy, 4)
        other_ids = [ca.entry(SpiffeId.parse(f"spiffe://example.org/o{i}"), other.spiffe_id).id for i in range(4)]
        assert [s.error for s in (await sign(ca, greedy, greedy_ids)).svids] == [""] * 4

        error = await refused(sign(ca, greedy, greedy_ids[:3]))
        assert (error.code(), details(error)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"agent {NODE_1} is over its SVID signing rate (2 per second, bursts of 4; "
            "node_api.ratelimit.signing); retry in 1.5 s",
        )
        assert retry_after_ms(error) == 1500
        assert recorded(ca, 4) == 4  # the refused call signed nothing

        assert [s.error for s in (await sign(ca, other, other_ids)).svids] == [""] * 4
        monotonic.now += 1.5
        assert [s.error for s in (await sign(ca, greedy, greedy_ids[:3])).svids] == [""] * 3


async def test_a_signing_rate_refusal_counts_each_svid_asked_as_an_issuance_error(start_ca: StartCa) -> None:
    async with start_ca(NodeApiLimits(max_batch_size=4, signing=Rate(SLOW, 4))) as ca:
        agent = await attested_agent(ca, "node-1")
        ids = entries_of(ca, agent, 4)
        await sign(ca, agent, ids)  # the whole burst

        await refused(sign(ca, agent, ids[:3]))

        labels = {"kind": "x509", "reason": "ResourceExhausted"}
        assert ca.metrics.registry.get_sample_value("trustmesh_issuance_errors_total", labels) == 3


# --- Attest: rate per source address ----------------------------------------------------------------------


async def attest_from(ca: RunningCa, host: str, token: str) -> node_pb2.AttestResponse:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.bundle().x509_authorities_pem())
    async with grpc.aio.secure_channel(
        f"{host}:{ca.attestation_port}", credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
    ) as ch:
        request = node_pb2.AttestRequest(
            method="join_token", payload=token.encode(), csr=csr_for(generate_private_key(KeyType.EC_P256))
        )
        response: node_pb2.AttestResponse = await node_pb2_grpc.NodeStub(ch).Attest(request, timeout=RPC_TIMEOUT)
    return response


def token(ca: RunningCa, name: str) -> str:
    return ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name=name).token


async def test_attestations_over_the_rate_of_a_source_are_refused_without_spending_the_token(
    start_ca: StartCa, monotonic: Monotonic
) -> None:
    async with start_ca(NodeApiLimits(attestation=Rate(0.5, 2))) as ca:
        await attest_from(ca, "127.0.0.1", token(ca, "node-1"))
        await attest_from(ca, "127.0.0.1", token(ca, "node-2"))
        third = token(ca, "node-3")
        error = await refused(attest_from(ca, "127.0.0.1", third))
        assert (error.code(), details(error)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too many attestations from 127.0.0.1 (0.5 per second, bursts of 2; node_api.ratelimit.attestation); "
            "retry in 2.0 s",
        )
        assert retry_after_ms(error) == 2000
        monotonic.now += 2.0
        response = await attest_from(ca, "127.0.0.1", third)  # the refusal did not spend the join token
        assert response.spiffe_id == "spiffe://example.org/trustmesh/agent/join_token/node-3"


async def test_a_source_over_its_attestation_rate_does_not_hold_up_another(start_ca: StartCa) -> None:
    async with start_ca(NodeApiLimits(attestation=Rate(SLOW, 1)), attestation_address="[::]:0") as ca:
        await attest_from(ca, "127.0.0.1", token(ca, "node-1"))
        error = await refused(attest_from(ca, "127.0.0.1", token(ca, "node-2")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        response = await attest_from(ca, "[::1]", token(ca, "node-3"))
        assert response.spiffe_id == "spiffe://example.org/trustmesh/agent/join_token/node-3"
