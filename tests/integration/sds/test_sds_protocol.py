"""The SDS v3 server over a real gRPC Unix socket, driven by a raw xDS client (DESIGN §4, xds_protocol.rst):
nonces, ACK/NACK, stale requests, added and not-yet-available names, push on change only (legacy roots
included), Fetch, Delta subscribe/unsubscribe/removed, and attestation failures."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from sds.cache import CacheSnapshot, WorkloadCache, WorkloadSvid
from sds.metrics import AgentMetrics
from sds.sds_v3 import (
    MAX_RESOURCE_NAME_BYTES,
    MAX_RESOURCE_NAMES,
    SecretDiscoveryService,
    SotwAnswer,
    add_sds_servicer,
)
from sds.secrets import DEFAULT, ROOTCA, SECRET_TYPE_URL
from spiffe_core.errors import NotAuthorized
from spiffe_core.selectors import Selector
from tests.support.grpc_streams import QUIET, WAIT, Stream
from tests.support.sds_snapshots import TestCa, snapshot

CALLER = frozenset({Selector("unix", "uid:1000")})
API_ID = "spiffe://example.org/api"


@dataclass
class FakeAttestor:
    selectors: frozenset[Selector] | None = CALLER
    calls: int = 0

    async def attest(self, context: Any) -> frozenset[Selector]:
        self.calls += 1
        if self.selectors is None:
            raise NotAuthorized("caller uid 4242 matches no registration entry; register it with a unix selector")
        return self.selectors


@dataclass
class Agent:
    """The state a test drives: the cache the server reads and a way to publish the next snapshot."""

    ca: TestCa
    cache: WorkloadCache
    attestor: FakeAttestor
    stub: Any
    web: WorkloadSvid
    metrics: AgentMetrics
    version: int = 1

    async def publish(self, svids: list[WorkloadSvid], legacy_roots: dict[str, bytes] | None = None) -> CacheSnapshot:
        self.version += 1
        snap = snapshot(self.ca, svids, version=self.version, legacy_roots=legacy_roots)
        await self.cache.publish(snap)
        return snap


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sds-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
async def agent(socket_dir: Path) -> AsyncIterator[Agent]:
    ca = TestCa.create("example.org")
    web = ca.svid("/web")
    cache = WorkloadCache(snapshot(ca, [web], version=1))
    attestor = FakeAttestor()
    metrics = AgentMetrics()
    server = grpc.aio.server()
    add_sds_servicer(SecretDiscoveryService(cache, attestor, metrics=metrics), server)
    address = f"unix:{socket_dir / 'sds.sock'}"
    server.add_insecure_port(address)
    await server.start()
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Agent(ca, cache, attestor, sds_pb2_grpc.SecretDiscoveryServiceStub(channel), web, metrics)
    finally:
        await channel.close()
        await server.stop(grace=None)


@pytest.fixture
async def stream(agent: Agent) -> AsyncIterator[Stream]:
    s = Stream(agent.stub.StreamSecrets())
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def delta(agent: Agent) -> AsyncIterator[Stream]:
    s = Stream(agent.stub.DeltaSecrets())
    try:
        yield s
    finally:
        await s.close()


def request(names: list[str], nonce: str = "", version: str = "", error: str | None = None) -> Any:
    req = discovery_pb2.DiscoveryRequest(
        resource_names=names, type_url=SECRET_TYPE_URL, response_nonce=nonce, version_info=version
    )
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def delta_request(
    subscribe: Sequence[str] = (),
    unsubscribe: Sequence[str] = (),
    nonce: str = "",
    initial: dict[str, str] | None = None,
    error: str | None = None,
) -> Any:
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=SECRET_TYPE_URL,
        resource_names_subscribe=subscribe,
        resource_names_unsubscribe=unsubscribe,
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def secrets_of(response: Any) -> dict[str, Any]:
    """name → Secret, asserting no name appears twice."""
    result: dict[str, Any] = {}
    for packed in response.resources:
        any_msg = packed.resource if isinstance(packed, discovery_pb2.Resource) else packed
        assert any_msg.type_url == SECRET_TYPE_URL
        secret = secret_pb2.Secret()
        secret.ParseFromString(any_msg.value)
        assert secret.name not in result, f"{secret.name} sent twice"
        result[secret.name] = secret
    return result


def leaf_pem(svid: WorkloadSvid) -> bytes:
    return svid.cert_chain[0].public_bytes(Encoding.PEM)


# --- state of the world -------------------------------------------------------------------------


async def test_stream_answers_first_request_with_available_secrets(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT, ROOTCA]))

    response = await stream.next()

    assert response.type_url == SECRET_TYPE_URL
    assert response.nonce
    assert response.version_info.startswith("1-")
    secrets = secrets_of(response)
    assert list(secrets) == [DEFAULT, ROOTCA]
    assert secrets[DEFAULT].tls_certificate.certificate_chain.inline_bytes == leaf_pem(agent.web)


async def test_stream_answers_first_request_even_when_nothing_is_available(stream: Stream) -> None:
    await stream.send(request([API_ID]))

    response = await stream.next()

    assert response.nonce
    assert list(response.resources) == []


async def test_stream_never_repeats_a_name_in_one_response(stream: Stream) -> None:
    await stream.send(request([DEFAULT, ROOTCA, DEFAULT]))

    response = await stream.next()

    assert [s.name for s in secrets_of(response).values()] == [DEFAULT, ROOTCA]
    assert len(response.resources) == 2


async def test_stream_does_not_resend_after_ack(stream: Stream) -> None:
    await stream.send(request([DEFAULT]))
    first = await stream.next()

    await stream.send(request([DEFAULT], nonce=first.nonce, version=first.version_info))

    await stream.expect_silence()


async def test_stream_gives_each_response_a_fresh_nonce_and_version(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT]))
    first = await stream.next()

    await agent.publish([agent.ca.svid("/web")])
    second = await stream.next()

    assert second.nonce != first.nonce
    assert second.version_info.startswith("2-")
    assert second.version_info != first.version_info


async def test_a_push_is_timed_from_publish_to_send_and_an_answer_is_not(agent: Agent, stream: Stream) -> None:
    def pushes() -> float | None:
        return agent.metrics.registry.get_sample_value("trustmesh_agent_push_seconds_count", {"api": "sds"})

    await stream.send(request([DEFAULT]))
    await stream.next()
    assert pushes() is None, "the answer to a request is no push"
    assert agent.metrics.registry.get_sample_value("trustmesh_agent_streams", {"api": "sds"}) == 1

    await agent.publish([agent.ca.svid("/web")])
    await stream.next()
    assert pushes() == 1
    seconds = agent.metrics.registry.get_sample_value("trustmesh_agent_push_seconds_sum", {"api": "sds"})
    assert seconds is not None
    assert 0 <= seconds < WAIT


async def test_stream_does_not_resend_rejected_content_after_nack(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT]))
    first = await stream.next()

    await stream.send(request([DEFAULT], nonce=first.nonce, error="Failed to load certificate chain"))
    await agent.publish([agent.web])  # new snapshot version, same content

    await stream.expect_silence()


async def test_stream_pushes_a_real_change_after_nack(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT]))
    first = await stream.next()
    await stream.send(request([DEFAULT], nonce=first.nonce, error="Failed to load certificate chain"))

    rotated = agent.ca.svid("/web")
    await agent.publish([rotated])

    pushed = secrets_of(await stream.next())
    assert pushed[DEFAULT].tls_certificate.certificate_chain.inline_bytes == leaf_pem(rotated)


async def test_stream_ignores_stale_nonce(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT]))
    first = await stream.next()
    await agent.publish([agent.ca.svid("/web")])
    second = await stream.next()

    await stream.send(request([DEFAULT, ROOTCA], nonce=first.nonce))  # answers the older response
    await stream.expect_silence()

    await stream.send(request([DEFAULT, ROOTCA], nonce=second.nonce))
    assert list(secrets_of(await stream.next())) == [DEFAULT, ROOTCA]


async def test_stream_answers_added_name_at_once(stream: Stream) -> None:
    await stream.send(request([DEFAULT]))
    first = await stream.next()

    await stream.send(request([DEFAULT, ROOTCA], nonce=first.nonce, version=first.version_info))

    assert list(secrets_of(await stream.next())) == [DEFAULT, ROOTCA]


async def test_stream_pushes_a_remembered_name_once_a_snapshot_has_it(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT, API_ID]))
    first = await stream.next()
    assert list(secrets_of(first)) == [DEFAULT]
    await stream.send(request([DEFAULT, API_ID], nonce=first.nonce, version=first.version_info))

    api = agent.ca.svid("/api")
    await agent.publish([agent.web, api])

    pushed = secrets_of(await stream.next())
    assert list(pushed) == [DEFAULT, API_ID]
    assert pushed[API_ID].tls_certificate.certificate_chain.inline_bytes == leaf_pem(api)


async def test_stream_sends_nothing_for_a_snapshot_with_identical_content(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT, ROOTCA]))
    first = await stream.next()
    await stream.send(request([DEFAULT, ROOTCA], nonce=first.nonce, version=first.version_info))

    await agent.publish([agent.web])

    await stream.expect_silence()


async def test_stream_sends_nothing_for_a_change_to_secrets_it_did_not_ask_for(agent: Agent, stream: Stream) -> None:
    await stream.send(request([ROOTCA]))
    first = await stream.next()
    await stream.send(request([ROOTCA], nonce=first.nonce, version=first.version_info))

    await agent.publish([agent.ca.svid("/web")])

    await stream.expect_silence()


def roots_pem(name: str) -> bytes:
    return TestCa.create(name).cert.public_bytes(Encoding.PEM)


async def test_stream_pushes_legacy_roots_when_they_arrive_and_when_they_change(agent: Agent, stream: Stream) -> None:
    await stream.send(request(["legacy/corp"]))
    first = await stream.next()
    assert list(first.resources) == []  # the CA has sent no roots yet: remembered
    await stream.send(request(["legacy/corp"], nonce=first.nonce, version=first.version_info))

    corp = roots_pem("corp.example")
    await agent.publish([agent.web], legacy_roots={"corp": corp})
    arrived = await stream.next()
    assert secrets_of(arrived)["legacy/corp"].validation_context.trusted_ca.inline_bytes == corp
    await stream.send(request(["legacy/corp"], nonce=arrived.nonce, version=arrived.version_info))

    replaced = roots_pem("corp2.example")
    await agent.publish([agent.web], legacy_roots={"corp": replaced})
    assert secrets_of(await stream.next())["legacy/corp"].validation_context.trusted_ca.inline_bytes == replaced


async def test_stream_asking_for_roots_the_ca_does_not_serve_gets_nothing_ever(agent: Agent, stream: Stream) -> None:
    await stream.send(request(["legacy/partner"]))
    first = await stream.next()
    assert list(first.resources) == []
    await stream.send(request(["legacy/partner"], nonce=first.nonce, version=first.version_info))

    await agent.publish([agent.web], legacy_roots={"corp": roots_pem("corp.example")})

    await stream.expect_silence()


async def test_stream_rejects_another_resource_type(stream: Stream) -> None:
    await stream.send(
        discovery_pb2.DiscoveryRequest(
            resource_names=["x"], type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"
        )
    )

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stream.next()

    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == (
        "type_url 'type.googleapis.com/envoy.config.cluster.v3.Cluster' is not served here; "
        f"the SDS endpoint serves only {SECRET_TYPE_URL!r}"
    )


async def test_a_refusal_repeats_only_the_start_of_a_huge_type_url(stream: Stream) -> None:
    """Status details travel as a header of at most 16 KiB; repeating 1 MB would lose the refusal."""
    await stream.send(discovery_pb2.DiscoveryRequest(type_url="x" * 1_000_000))

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stream.next()

    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == (
        f"type_url {'x' * 100!r}… is not served here; the SDS endpoint serves only {SECRET_TYPE_URL!r}"
    )


async def test_stream_releases_its_tasks_when_the_client_goes_away(agent: Agent) -> None:
    baseline = len(asyncio.all_tasks())
    s = Stream(agent.stub.StreamSecrets())
    await s.send(request([DEFAULT]))
    await s.next()
    assert len(asyncio.all_tasks()) > baseline

    await s.close()

    for _ in range(50):  # bounded: up to 5 s
        if len(asyncio.all_tasks()) <= baseline:
            break
        await asyncio.sleep(0.1)
    assert len(asyncio.all_tasks()) <= baseline


async def test_a_stream_waits_for_one_change_at_a_time_and_leaves_no_waiter_when_it_ends(agent: Agent) -> None:
    """ACKs and new requests do not add waits; a stream that ends takes its wait with it, so the cache
    holds nothing for streams that left, however many come and go between changes."""
    s = Stream(agent.stub.StreamSecrets())
    await s.send(request([DEFAULT]))
    first = await s.next()
    for _ in range(5):
        await s.send(request([DEFAULT], nonce=first.nonce, version=first.version_info))
    await s.expect_silence()  # the ACKs were handled
    assert agent.cache.waiting == 1
    await s.close()
    for _ in range(50):  # bounded: up to 5 s
        if agent.cache.waiting == 0:
            break
        await asyncio.sleep(0.1)
    assert agent.cache.waiting == 0


async def test_caller_is_attested_again_before_every_response(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT]))
    first = await stream.next()
    await stream.send(request([DEFAULT, ROOTCA], nonce=first.nonce))
    await stream.next()

    assert agent.attestor.calls == 3  # at the start, then before each of the two responses


EXECUTED = frozenset({Selector("unix", "uid:1000"), Selector("unix", "sha256:" + "b" * 64)})
CHANGED = (
    "SDS caller is not authorized: the caller's selectors changed since it was attested (no longer: none; "
    f"now also: unix:sha256:{'b' * 64}), e.g. its process executed another binary; the connection's identity "
    "is not handed to what runs now — reconnect to be attested afresh"
)


@pytest.mark.parametrize(
    ("method", "first"),
    [
        pytest.param("StreamSecrets", request([DEFAULT]), id="stream"),
        pytest.param("DeltaSecrets", delta_request([DEFAULT]), id="delta"),
    ],
)
async def test_stream_ends_before_a_push_when_the_callers_selectors_changed(
    agent: Agent, method: str, first: Any
) -> None:
    s = Stream(getattr(agent.stub, method)())
    try:
        await s.send(first)
        await s.next()
        agent.attestor.selectors = EXECUTED  # the process executed another binary
        await agent.publish([agent.ca.svid("/web")])
        error = await s.error()
    finally:
        await s.close()

    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, CHANGED)


async def test_stream_ends_before_a_push_when_the_caller_is_gone(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT]))
    await stream.next()
    agent.attestor.selectors = None
    await agent.publish([agent.ca.svid("/web")])

    error = await stream.error()

    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, DENIED)


async def test_stream_answers_no_request_once_the_callers_selectors_changed(agent: Agent, stream: Stream) -> None:
    await stream.send(request([DEFAULT]))
    first = await stream.next()
    agent.attestor.selectors = EXECUTED
    await stream.send(request([DEFAULT, ROOTCA], nonce=first.nonce))

    error = await stream.error()

    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, CHANGED)


# --- fetch --------------------------------------------------------------------------------------


async def test_fetch_returns_the_named_secrets(agent: Agent) -> None:
    response = await agent.stub.FetchSecrets(request([ROOTCA, DEFAULT]), timeout=WAIT)

    assert list(secrets_of(response)) == [ROOTCA, DEFAULT]
    assert response.version_info.startswith("1-")
    assert response.nonce


async def test_fetch_of_a_name_not_available_is_not_found(agent: Agent) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await agent.stub.FetchSecrets(request([DEFAULT, API_ID]), timeout=WAIT)

    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert failure.value.details() == (
        f"secrets [{API_ID!r}] are not available to this caller: unknown names, not entitled by its selectors, "
        "or not issued yet — retry later or use StreamSecrets to wait for them"
    )


async def test_fetch_of_many_long_names_not_available_names_only_the_first_few(agent: Agent) -> None:
    names = [f"spiffe://example.org/{n:04d}/" + "x" * 1_900 for n in range(MAX_RESOURCE_NAMES)]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await agent.stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=names, type_url=SECRET_TYPE_URL))

    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    shown = ", ".join(repr(name[:100]) + "…" for name in names[:5])
    assert failure.value.details().startswith(f"secrets [{shown}, and 1019 more] are not available to this caller")


async def test_fetch_without_names_is_invalid(agent: Agent) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await agent.stub.FetchSecrets(request([]), timeout=WAIT)

    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == (
        "FetchSecrets needs resource_names; SDS has no wildcard — name the secrets "
        "('default', 'ROOTCA', 'ALL', a SPIFFE ID, 'spiffe://<trust domain>' or 'legacy/<name>')"
    )


# --- delta --------------------------------------------------------------------------------------


async def test_delta_sends_subscribed_resources_with_their_versions(agent: Agent, delta: Stream) -> None:
    await delta.send(delta_request(subscribe=[DEFAULT, ROOTCA]))

    response = await delta.next()

    assert response.nonce
    assert response.system_version_info == "1"
    assert [(r.name, bool(r.version)) for r in response.resources] == [(DEFAULT, True), (ROOTCA, True)]
    assert list(secrets_of(response)) == [DEFAULT, ROOTCA]
    assert list(response.removed_resources) == []


async def test_delta_sends_only_the_resources_that_changed(agent: Agent, delta: Stream) -> None:
    await delta.send(delta_request(subscribe=[DEFAULT, ROOTCA]))
    first = await delta.next()
    await delta.send(delta_request(nonce=first.nonce))

    await agent.publish([agent.ca.svid("/web")])

    pushed = await delta.next()
    assert [r.name for r in pushed.resources] == [DEFAULT]
    assert pushed.nonce != first.nonce


async def test_delta_answers_a_later_subscription_with_only_the_new_resource(delta: Stream) -> None:
    await delta.send(delta_request(subscribe=[DEFAULT]))
    first = await delta.next()

    await delta.send(delta_request(subscribe=[ROOTCA], nonce=first.nonce))

    assert [r.name for r in (await delta.next()).resources] == [ROOTCA]


async def test_delta_stops_pushing_an_unsubscribed_resource(agent: Agent, delta: Stream) -> None:
    await delta.send(delta_request(subscribe=[DEFAULT, ROOTCA]))
    first = await delta.next()
    await delta.send(delta_request(unsubscribe=[DEFAULT], nonce=first.nonce))
    # An unsubscribe gets no response, so nothing tells us the server has read it; give it time
    # before the change arrives by the other path (the cache), or a loaded machine reorders them.
    await asyncio.sleep(QUIET)

    await agent.publish([agent.ca.svid("/web")])

    await delta.expect_silence()


async def test_delta_lists_a_resource_no_longer_entitled_as_removed(agent: Agent, delta: Stream) -> None:
    api = agent.ca.svid("/api")
    await agent.publish([agent.web, api])
    await delta.send(delta_request(subscribe=[DEFAULT, API_ID]))
    first = await delta.next()
    assert [r.name for r in first.resources] == [DEFAULT, API_ID]
    await delta.send(delta_request(nonce=first.nonce))

    await agent.publish([agent.web])

    pushed = await delta.next()
    assert list(pushed.resources) == []
    assert list(pushed.removed_resources) == [API_ID]


async def test_delta_pushes_a_remembered_name_once_a_snapshot_has_it(agent: Agent, delta: Stream) -> None:
    await delta.send(delta_request(subscribe=[API_ID]))
    await delta.expect_silence()

    await agent.publish([agent.web, agent.ca.svid("/api")])

    assert [r.name for r in (await delta.next()).resources] == [API_ID]


async def test_delta_sends_changed_legacy_roots_alone(agent: Agent, delta: Stream) -> None:
    await agent.publish([agent.web], legacy_roots={"corp": roots_pem("corp.example")})
    await delta.send(delta_request(subscribe=[DEFAULT, "legacy/corp"]))
    first = await delta.next()
    assert sorted(r.name for r in first.resources) == [DEFAULT, "legacy/corp"]
    await delta.send(delta_request(nonce=first.nonce))

    replaced = roots_pem("corp2.example")
    await agent.publish([agent.web], legacy_roots={"corp": replaced})

    pushed = await delta.next()
    assert [r.name for r in pushed.resources] == ["legacy/corp"]
    assert secrets_of(pushed)["legacy/corp"].validation_context.trusted_ca.inline_bytes == replaced


async def test_delta_honors_initial_resource_versions(agent: Agent) -> None:
    first_stream = Stream(agent.stub.DeltaSecrets())
    await first_stream.send(delta_request(subscribe=[DEFAULT, ROOTCA]))
    held = {r.name: r.version for r in (await first_stream.next()).resources}
    await first_stream.close()

    reconnected = Stream(agent.stub.DeltaSecrets())
    try:
        await reconnected.send(
            delta_request(subscribe=[DEFAULT, ROOTCA], initial={DEFAULT: held[DEFAULT], ROOTCA: "outdated"})
        )
        response = await reconnected.next()
    finally:
        await reconnected.close()

    assert [r.name for r in response.resources] == [ROOTCA]


async def test_delta_does_not_resend_rejected_content_after_nack(agent: Agent, delta: Stream) -> None:
    await delta.send(delta_request(subscribe=[DEFAULT]))
    first = await delta.next()

    await delta.send(delta_request(nonce=first.nonce, error="Failed to load certificate chain"))
    await agent.publish([agent.web])

    await delta.expect_silence()


# --- attestation --------------------------------------------------------------------------------

DENIED = "SDS caller is not authorized: caller uid 4242 matches no registration entry; register it with a unix selector"


@pytest.mark.parametrize(
    "method",
    [pytest.param("StreamSecrets", id="stream"), pytest.param("DeltaSecrets", id="delta")],
)
async def test_unknown_caller_stream_is_permission_denied(agent: Agent, method: str) -> None:
    agent.attestor.selectors = None
    s = Stream(getattr(agent.stub, method)())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await s.next()
    finally:
        await s.close()

    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert failure.value.details() == DENIED


async def test_unknown_caller_fetch_is_permission_denied(agent: Agent) -> None:
    agent.attestor.selectors = None

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await agent.stub.FetchSecrets(request([DEFAULT]), timeout=WAIT)

    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert failure.value.details() == DENIED


async def test_caller_entitled_to_no_svid_gets_no_certificate_but_the_bundle(agent: Agent, stream: Stream) -> None:
    agent.attestor.selectors = frozenset({Selector("unix", "uid:0")})
    await stream.send(request([DEFAULT, ROOTCA]))

    assert list(secrets_of(await stream.next())) == [ROOTCA]


# --- limits ---------------------------------------------------------------------------------------


def too_many(count: int, what: str = "the request") -> str:
    return (
        f"{what} names {count} resources; an SDS stream may subscribe to at most {MAX_RESOURCE_NAMES} "
        "(agent setting limits.sds_max_resource_names) — subscribe to the secrets this proxy uses"
    )


def names(count: int, prefix: str = "spiffe://example.org/n") -> list[str]:
    return [f"{prefix}{n}" for n in range(count)]


async def test_stream_takes_a_subscription_of_the_largest_size(stream: Stream) -> None:
    await stream.send(request([*names(MAX_RESOURCE_NAMES - 1), DEFAULT]))
    assert list(secrets_of(await stream.next())) == [DEFAULT]


async def test_stream_with_too_many_names_ends_resource_exhausted(stream: Stream) -> None:
    await stream.send(request(names(MAX_RESOURCE_NAMES + 1)))
    error = await stream.error()
    assert (error.code(), error.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        too_many(MAX_RESOURCE_NAMES + 1),
    )


async def test_stream_with_a_name_longer_than_a_spiffe_id_ends_invalid_argument(stream: Stream) -> None:
    long_name = "spiffe://example.org/" + "x" * MAX_RESOURCE_NAME_BYTES
    await stream.send(request([DEFAULT, long_name]))
    error = await stream.error()
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"resource name #1 of the request ('spiffe://example.org/xxxxxxxxxxx'…) is {len(long_name)} bytes long; "
        "SDS names are 'default', 'ROOTCA', 'ALL', 'legacy/<name>' or SPIFFE IDs, at most 2048 bytes "
        "(SPIFFE-ID.md §2.3)",
    )


async def test_delta_subscription_may_not_grow_past_the_limit(delta: Stream) -> None:
    await delta.send(delta_request(subscribe=[DEFAULT, *names(600)]))
    first = await delta.next()
    await delta.send(delta_request(subscribe=names(600, "spiffe://example.org/m"), nonce=first.nonce))
    error = await delta.error()
    assert (error.code(), error.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        too_many(1201, "the stream's subscription"),
    )


async def test_delta_subscription_may_be_replaced_within_the_limit(delta: Stream) -> None:
    await delta.send(delta_request(subscribe=[*names(MAX_RESOURCE_NAMES - 1), DEFAULT]))
    first = await delta.next()
    await delta.send(delta_request(subscribe=[ROOTCA], unsubscribe=names(MAX_RESOURCE_NAMES - 1), nonce=first.nonce))
    assert list(secrets_of(await delta.next())) == [ROOTCA]


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        pytest.param({"subscribe": names(MAX_RESOURCE_NAMES + 1)}, "the request", id="subscribe"),
        pytest.param({"unsubscribe": names(MAX_RESOURCE_NAMES + 1)}, "resource_names_unsubscribe", id="unsubscribe"),
        pytest.param(
            {"subscribe": [DEFAULT], "initial": dict.fromkeys(names(MAX_RESOURCE_NAMES + 1), "v1")},
            "initial_resource_versions",
            id="initial-versions",
        ),
    ],
)
async def test_delta_request_with_too_many_names_ends_resource_exhausted(
    delta: Stream, kwargs: dict[str, Any], what: str
) -> None:
    await delta.send(delta_request(**kwargs))
    error = await delta.error()
    assert (error.code(), error.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        too_many(MAX_RESOURCE_NAMES + 1, what),
    )


async def test_fetch_with_too_many_names_is_resource_exhausted(agent: Agent) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await agent.stub.FetchSecrets(request([DEFAULT] * (MAX_RESOURCE_NAMES + 1)), timeout=WAIT)
    assert (failure.value.code(), failure.value.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        too_many(MAX_RESOURCE_NAMES + 1),
    )


async def test_a_huge_subscription_is_refused_without_stalling_another_stream(agent: Agent, stream: Stream) -> None:
    """600,000 names (about 4 MB, near gRPC's message limit) are counted, not read: the stream ends at
    once and another caller's request is answered meanwhile."""
    await stream.send(request([DEFAULT]))
    first = await stream.next()
    huge = Stream(agent.stub.StreamSecrets())
    try:
        await huge.send(request([f"n{n}" for n in range(600_000)]))
        started = asyncio.get_running_loop().time()
        await stream.send(request([DEFAULT, ROOTCA], nonce=first.nonce))
        assert list(secrets_of(await stream.next())) == [DEFAULT, ROOTCA]
        assert asyncio.get_running_loop().time() - started < 1.0
        assert (await huge.error()).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await huge.close()


# --- shared encoding ----------------------------------------------------------------------------


async def test_a_change_reaching_many_streams_of_one_subscription_is_encoded_once(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[int] = []
    encode = SotwAnswer.of

    def counted(snap: CacheSnapshot, resources: Any) -> SotwAnswer:
        encoded.append(snap.version)
        return encode(snap, resources)

    monkeypatch.setattr(SotwAnswer, "of", counted)
    streams = [Stream(agent.stub.StreamSecrets()) for _ in range(5)]
    try:
        firsts = []
        for s in streams:
            await s.send(request([DEFAULT, ROOTCA]))
            firsts.append(await s.next())
        for s, first in zip(streams, firsts, strict=True):
            await s.send(request([DEFAULT, ROOTCA], nonce=first.nonce, version=first.version_info))

        await agent.publish([agent.ca.svid("/web")])
        pushes = [await s.next() for s in streams]
    finally:
        for s in streams:
            await s.close()

    assert encoded == [1, 2]
    assert len({p.nonce for p in pushes}) == len(pushes)
    assert all(p.version_info.startswith("2-") and p.resources == pushes[0].resources for p in pushes)
