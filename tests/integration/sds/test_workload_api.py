"""The SPIFFE Workload API over a real Unix socket, through the attesting proxy, driven by our own stubs
(SPIFFE_Workload_API.md §4-§6, SPIFFE_Workload_Endpoint.md §3, §6). The test process is the workload:
it is attested from its own peer credentials, so entries select it by ``unix:uid:<our uid>``."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_private_key

from sds.cache import CacheSnapshot, WorkloadCache, WorkloadSvid
from sds.metrics import AgentMetrics
from spiffe_core.bundle import Bundle
from spiffe_core.errors import JwtSvidError, UpstreamUnavailable
from spiffe_core.jwt_svid import validate_jwt_svid
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.clock import FakeClock
from tests.support.garbage import cyclic_garbage, frames_holding
from tests.support.grpc_streams import WAIT, Stream
from tests.support.processes import wait_until
from tests.support.sds_snapshots import TestCa, snapshot
from tests.support.workload_api import (
    SECURITY_HEADER,
    FakeBundleRefresher,
    FakeJwtMinter,
    TestJwtKey,
    serve_workload_api,
    socket_directory,
    with_jwt_key,
)
from wire import workload_pb2, workload_pb2_grpc

ME = f"unix:uid:{os.getuid()}"
STRANGER = "unix:uid:4242424"


@dataclass
class Agent:
    ca: TestCa
    partner: TestCa
    jwt_key: TestJwtKey
    partner_jwt_key: TestJwtKey
    cache: WorkloadCache
    minter: FakeJwtMinter
    clock: FakeClock
    stub: Any
    refresher: FakeBundleRefresher
    metrics: AgentMetrics
    version: int = 1

    def snapshot(self, svids: Iterable[WorkloadSvid], *, with_bundle: bool = True) -> CacheSnapshot:
        """Own bundle with an X.509 and a JWT authority; partner.org federated (also with both)."""
        self.version += 1
        partner_bundle = self.partner_jwt_key.publish_in(self.partner.bundle())
        snap = snapshot(
            self.ca, svids, version=self.version, federated={"partner.org": partner_bundle}, with_bundle=with_bundle
        )
        return with_jwt_key(snap, self.jwt_key) if with_bundle else snap

    async def publish(self, svids: Iterable[WorkloadSvid], *, with_bundle: bool = True) -> None:
        await self.cache.publish(self.snapshot(svids, with_bundle=with_bundle))


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    ca = TestCa.create("example.org")
    partner = TestCa.create("partner.org")
    jwt_key = TestJwtKey.create(ca.trust_domain)
    minter = FakeJwtMinter(jwt_key)
    cache = WorkloadCache(CacheSnapshot(ca.trust_domain))
    clock = FakeClock(datetime.now(UTC))
    refresher = FakeBundleRefresher()
    metrics = AgentMetrics()
    with socket_directory() as directory:
        async with (
            serve_workload_api(
                cache, minter, directory / "workload.sock", clock, bundle_refresher=refresher, metrics=metrics
            ) as endpoint,
            grpc.aio.insecure_channel(f"unix:{endpoint.public_socket}") as channel,
        ):
            state = Agent(
                ca,
                partner,
                jwt_key,
                TestJwtKey.create(partner.trust_domain, "partner-key"),
                cache,
                minter,
                clock,
                workload_pb2_grpc.SpiffeWorkloadAPIStub(channel),
                refresher,
                metrics,
            )
            await state.publish([ca.svid("/web", [ME]), ca.svid("/db", [STRANGER])])
            yield state


def open_stream(agent: Agent, method: str, request: Any) -> Stream:
    return Stream(getattr(agent.stub, method)(request, metadata=SECURITY_HEADER))


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await asyncio.wait_for(call, WAIT)
    return failure.value


def der(certs: Iterable[Any]) -> bytes:
    return b"".join(c.public_bytes(Encoding.DER) for c in certs)


ALL_RPCS = [
    pytest.param("FetchX509SVID", workload_pb2.X509SVIDRequest(), id="FetchX509SVID"),
    pytest.param("FetchX509Bundles", workload_pb2.X509BundlesRequest(), id="FetchX509Bundles"),
    pytest.param("FetchJWTBundles", workload_pb2.JWTBundlesRequest(), id="FetchJWTBundles"),
    pytest.param("FetchJWTSVID", workload_pb2.JWTSVIDRequest(audience=["api"]), id="FetchJWTSVID"),
    pytest.param(
        "ValidateJWTSVID", workload_pb2.ValidateJWTSVIDRequest(audience="api", svid="x"), id="ValidateJWTSVID"
    ),
]
STREAMING = {"FetchX509SVID", "FetchX509Bundles", "FetchJWTBundles"}
HEADER_MISSING = (
    "security header missing from request: every Workload API call must carry the gRPC metadata "
    "'workload.spiffe.io: true' (SPIFFE_Workload_Endpoint.md §3)"
)


async def call_error(agent: Agent, method: str, request: Any, metadata: Any) -> grpc.aio.AioRpcError:
    call = getattr(agent.stub, method)(request, metadata=metadata)
    if method in STREAMING:
        stream = Stream(call)
        try:
            return await stream.error()
        finally:
            await stream.close()
    return await rpc_error(call)


@pytest.mark.parametrize(("method", "request_message"), ALL_RPCS)
async def test_rejects_call_without_security_header(agent: Agent, method: str, request_message: Any) -> None:
    error = await call_error(agent, method, request_message, metadata=())
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, HEADER_MISSING)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((("workload.spiffe.io", "True"),), id="value-case-differs"),
        pytest.param((("workload.spiffe.io", "yes"),), id="value-not-true"),
        pytest.param((("workload-spiffe-io", "true"),), id="key-misspelt"),
    ],
)
async def test_rejects_security_header_that_is_not_exactly_true(agent: Agent, metadata: Any) -> None:
    error = await call_error(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest(), metadata)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, HEADER_MISSING)


@pytest.mark.parametrize(("method", "request_message"), [p for p in ALL_RPCS if p.id != "ValidateJWTSVID"])
async def test_denies_caller_entitled_to_nothing(agent: Agent, method: str, request_message: Any) -> None:
    await agent.publish([agent.ca.svid("/db", [STRANGER])])
    error = await call_error(agent, method, request_message, SECURITY_HEADER)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().startswith(
        "no identity issued to this caller: no registration entry on this agent matches its selectors ("
    )
    assert f"{ME}, " in error.details()


async def test_fetch_x509_svid_returns_entitled_svid_key_and_bundle(agent: Agent) -> None:
    web = agent.ca.svid("/web", [ME], entry_id="e-web")
    web = replace(web, hint="internal")
    await agent.publish([web, agent.ca.svid("/db", [STRANGER])])
    stream = open_stream(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest())
    response = await stream.next()
    await stream.close()

    assert [s.spiffe_id for s in response.svids] == ["spiffe://example.org/web"]
    svid = response.svids[0]
    assert svid.x509_svid == der(web.cert_chain)
    key = load_der_private_key(svid.x509_svid_key, password=None)
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == web.cert_chain[0].public_key().public_bytes(*spki)
    assert svid.bundle == der([agent.ca.cert])
    assert svid.hint == "internal"
    assert dict(response.federated_bundles) == {}


async def test_fetch_x509_svid_sends_federated_bundles_the_entry_names(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME], federates_with=["partner.org"])])
    stream = open_stream(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest())
    response = await stream.next()
    await stream.close()
    assert dict(response.federated_bundles) == {"spiffe://partner.org": der([agent.partner.cert])}


async def test_fetch_x509_svid_sends_crls(agent: Agent) -> None:
    crl = agent.ca.crl_der([1234])
    await agent.cache.publish(replace(agent.snapshot([agent.ca.svid("/web", [ME])]), crls=(crl,)))
    stream = open_stream(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest())
    response = await stream.next()
    await stream.close()
    assert list(response.crl) == [crl]


async def test_fetch_x509_svid_sends_every_identity_default_first(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME]), agent.ca.svid("/db", [STRANGER]), agent.ca.svid("/cli", [ME])])
    stream = open_stream(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest())
    response = await stream.next()
    await stream.close()
    assert [s.spiffe_id for s in response.svids] == ["spiffe://example.org/web", "spiffe://example.org/cli"]


async def test_fetch_x509_svid_leaves_out_svid_repeating_a_hint(agent: Agent) -> None:
    first = replace(agent.ca.svid("/web", [ME]), hint="internal")
    second = replace(agent.ca.svid("/cli", [ME]), hint="internal")
    await agent.publish([first, second])
    stream = open_stream(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest())
    response = await stream.next()
    await stream.close()
    assert [(s.spiffe_id, s.hint) for s in response.svids] == [("spiffe://example.org/web", "internal")]


async def test_fetch_x509_svid_pushes_rotated_svid(agent: Agent) -> None:
    stream = open_stream(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest())
    await stream.next()
    rotated = agent.ca.svid("/web", [ME])
    await agent.publish([rotated, agent.ca.svid("/db", [STRANGER])])
    response = await stream.next()
    await stream.close()
    assert response.svids[0].x509_svid == der(rotated.cert_chain)


async def test_a_push_on_a_fetch_stream_is_timed_and_the_stream_counted_while_open(agent: Agent) -> None:
    def sample(name: str) -> float | None:
        return agent.metrics.registry.get_sample_value(name, {"api": "workload_api"})

    stream = open_stream(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest())
    await stream.next()
    assert sample("trustmesh_agent_streams") == 1
    assert sample("trustmesh_agent_push_seconds_count") is None, "the first answer is no push"
    await agent.publish([agent.ca.svid("/web", [ME]), agent.ca.svid("/db", [STRANGER])])
    await stream.next()
    assert sample("trustmesh_agent_push_seconds_count") == 1
    await stream.close()
    await asyncio.to_thread(wait_until, lambda: sample("trustmesh_agent_streams") == 0, WAIT, "the stream to close")


async def test_fetch_x509_svid_stays_silent_when_the_change_is_not_the_callers(agent: Agent) -> None:
    web = agent.ca.svid("/web", [ME])
    await agent.publish([web, agent.ca.svid("/db", [STRANGER])])
    stream = open_stream(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest())
    await stream.next()
    await agent.publish([web, agent.ca.svid("/db", [STRANGER])])  # only someone else's SVID rotated
    await stream.expect_silence()
    await stream.close()


async def test_fetch_x509_svid_ends_with_permission_denied_when_last_identity_is_removed(agent: Agent) -> None:
    stream = open_stream(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest())
    await stream.next()
    await agent.publish([agent.ca.svid("/db", [STRANGER])])
    error = await stream.error()
    await stream.close()
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().startswith("no identity issued to this caller")


async def test_fetch_x509_svid_is_unavailable_before_the_bundle_arrives(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME])], with_bundle=False)
    error = await call_error(agent, "FetchX509SVID", workload_pb2.X509SVIDRequest(), SECURITY_HEADER)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "the agent holds no bundle for its trust domain example.org yet; retry with backoff (it arrives "
        "with the agent's first update from the CA)",
    )


async def test_fetch_x509_bundles_returns_own_and_federated_bundles(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME], federates_with=["partner.org"])])
    stream = open_stream(agent, "FetchX509Bundles", workload_pb2.X509BundlesRequest())
    response = await stream.next()
    await stream.close()
    assert dict(response.bundles) == {
        "spiffe://example.org": der([agent.ca.cert]),
        "spiffe://partner.org": der([agent.partner.cert]),
    }


async def test_fetch_x509_bundles_pushes_a_new_authority(agent: Agent) -> None:
    stream = open_stream(agent, "FetchX509Bundles", workload_pb2.X509BundlesRequest())
    await stream.next()
    next_ca = TestCa.create("example.org")
    snap = agent.snapshot([agent.ca.svid("/web", [ME])])
    assert snap.bundle is not None
    await agent.cache.publish(
        replace(snap, bundle=snap.bundle.with_changes(x509_authorities=[agent.ca.cert, next_ca.cert]))
    )
    response = await stream.next()
    await stream.close()
    assert dict(response.bundles) == {"spiffe://example.org": der([agent.ca.cert, next_ca.cert])}


async def test_fetch_jwt_bundles_returns_only_jwt_authorities(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME], federates_with=["partner.org"])])
    stream = open_stream(agent, "FetchJWTBundles", workload_pb2.JWTBundlesRequest())
    response = await stream.next()
    await stream.close()

    assert set(response.bundles) == {"spiffe://example.org", "spiffe://partner.org"}
    own = json.loads(response.bundles["spiffe://example.org"])
    assert [(k["use"], k["kid"]) for k in own["keys"]] == [("jwt-svid", "jwt-key-1")]
    parsed = Bundle.parse_jwks(TrustDomain("example.org"), response.bundles["spiffe://example.org"])
    assert (parsed.x509_authorities, parsed.jwt_authorities) == ((), (agent.jwt_key.authority,))
    partner = Bundle.parse_jwks(TrustDomain("partner.org"), response.bundles["spiffe://partner.org"])
    assert partner.jwt_authorities == (agent.partner_jwt_key.authority,)


async def test_fetch_jwt_svid_requires_an_audience(agent: Agent) -> None:
    error = await rpc_error(agent.stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(), metadata=SECURITY_HEADER))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FetchJWTSVID audience refused: a JWT-SVID needs at least one audience (JWT-SVID.md §3.2); pass e.g. "
        "['payments']",
    )


@pytest.mark.parametrize(
    ("audience", "rule"),
    [
        pytest.param(
            ["x" * 1_000_000], f"audience #0 {'x' * 32!r}… is 1000000 bytes long; an audience may be", id="huge"
        ),
        pytest.param([f"s{n}" for n in range(33)], "33 audiences requested; a JWT-SVID carries at most 32", id="many"),
        pytest.param(["api", "a\x1bb"], "audience #1 'a\\x1bb' holds the non-printable character U+001B", id="escape"),
    ],
)
async def test_fetch_jwt_svid_refuses_audiences_the_ca_would_refuse(
    agent: Agent, audience: list[str], rule: str
) -> None:
    await agent.publish([agent.ca.svid("/web", [ME])])
    error = await rpc_error(
        agent.stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=audience), metadata=SECURITY_HEADER)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"FetchJWTSVID audience refused: {rule}")
    assert agent.minter.calls == []


async def test_fetch_jwt_svid_returns_one_token_per_identity(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME]), agent.ca.svid("/cli", [ME]), agent.ca.svid("/db", [STRANGER])])
    response = await agent.stub.FetchJWTSVID(
        workload_pb2.JWTSVIDRequest(audience=["api", "billing"]), metadata=SECURITY_HEADER
    )
    assert [s.spiffe_id for s in response.svids] == ["spiffe://example.org/web", "spiffe://example.org/cli"]
    bundles = agent.cache.get_snapshot().bundle
    assert bundles is not None
    for svid in response.svids:
        checked = validate_jwt_svid(svid.svid, audience=["billing"], bundle_source=bundles, now=datetime.now(UTC))
        assert (str(checked.spiffe_id), checked.audience) == (svid.spiffe_id, ("api", "billing"))


async def test_fetch_jwt_svid_for_the_requested_identity_only(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME]), agent.ca.svid("/cli", [ME])])
    response = await agent.stub.FetchJWTSVID(
        workload_pb2.JWTSVIDRequest(audience=["api"], spiffe_id="spiffe://example.org/cli"), metadata=SECURITY_HEADER
    )
    assert [s.spiffe_id for s in response.svids] == ["spiffe://example.org/cli"]
    assert agent.minter.calls == [(SpiffeId.parse("spiffe://example.org/cli"), ("api",))]


async def test_fetch_jwt_svid_denies_identity_of_another_workload(agent: Agent) -> None:
    request = workload_pb2.JWTSVIDRequest(audience=["api"], spiffe_id="spiffe://example.org/db")
    error = await rpc_error(agent.stub.FetchJWTSVID(request, metadata=SECURITY_HEADER))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "the caller is not entitled to spiffe://example.org/db: no registration entry for it matches the "
        "caller's selectors; ask for one of its own identities or leave spiffe_id empty",
    )
    assert agent.minter.calls == []


async def test_fetch_jwt_svid_rejects_malformed_spiffe_id(agent: Agent) -> None:
    request = workload_pb2.JWTSVIDRequest(audience=["api"], spiffe_id="spiffe://Example.org/web")
    error = await rpc_error(agent.stub.FetchJWTSVID(request, metadata=SECURITY_HEADER))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("spiffe_id is not a SPIFFE ID: ")


async def test_fetch_jwt_svid_maps_minter_error_kind_to_status(agent: Agent) -> None:
    agent.minter.error = UpstreamUnavailable("the CA did not answer; retry")
    error = await rpc_error(
        agent.stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["api"]), metadata=SECURITY_HEADER)
    )
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "the CA did not answer; retry")


async def test_fetch_jwt_svid_hides_unexpected_minter_failure(agent: Agent) -> None:
    agent.minter.error = RuntimeError("secret detail")
    error = await rpc_error(
        agent.stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["api"]), metadata=SECURITY_HEADER)
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INTERNAL,
        "internal error while minting a JWT-SVID for spiffe://example.org/web",
    )


async def test_validate_jwt_svid_returns_spiffe_id_and_claims(agent: Agent) -> None:
    token = agent.jwt_key.mint(SpiffeId.parse("spiffe://example.org/web"), ["api"], agent.clock.now())
    response = await agent.stub.ValidateJWTSVID(
        workload_pb2.ValidateJWTSVIDRequest(audience="api", svid=token), metadata=SECURITY_HEADER
    )
    assert response.spiffe_id == "spiffe://example.org/web"
    claims = dict(response.claims)
    assert (claims["sub"], claims["aud"]) == ("spiffe://example.org/web", "api")
    assert set(claims) == {"sub", "aud", "exp", "iat"}


async def test_validate_jwt_svid_uses_the_federated_bundle_of_a_foreign_subject(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME], federates_with=["partner.org"])])
    token = agent.partner_jwt_key.mint(SpiffeId.parse("spiffe://partner.org/payments"), ["api"], agent.clock.now())
    response = await agent.stub.ValidateJWTSVID(
        workload_pb2.ValidateJWTSVIDRequest(audience="api", svid=token), metadata=SECURITY_HEADER
    )
    assert response.spiffe_id == "spiffe://partner.org/payments"


async def test_validate_jwt_svid_refuses_a_trust_domain_only_another_workload_federates_with(agent: Agent) -> None:
    await agent.publish(
        [agent.ca.svid("/web", [ME]), agent.ca.svid("/batch", [STRANGER], federates_with=["partner.org"])]
    )
    assert TrustDomain("partner.org") in agent.cache.get_snapshot().federated_bundles  # the agent holds it
    token = agent.partner_jwt_key.mint(SpiffeId.parse("spiffe://partner.org/payments"), ["api"], agent.clock.now())
    error = await rpc_error(
        agent.stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="api", svid=token), metadata=SECURITY_HEADER
        )
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "JWT-SVID is not valid: no bundle for trust domain partner.org, the trust domain of "
        "spiffe://partner.org/payments; a JWT-SVID is validated only with its own trust domain's bundle — "
        "federate with it first",
    )


async def validate_error(agent: Agent, token: str) -> grpc.aio.AioRpcError:
    return await rpc_error(
        agent.stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="api", svid=token), metadata=SECURITY_HEADER
        )
    )


PAYMENTS = SpiffeId.parse("spiffe://partner.org/payments")
NEW_KEY_UNKNOWN = (
    "JWT-SVID is not valid: JWT-SVID key 'partner-key-2' is not a JWT authority in the bundle of partner.org; "
    "the key is unknown, removed, or the bundle is stale"
)


async def test_a_federated_partners_brand_new_key_validates_with_the_cas_fresh_bundle(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME], federates_with=["partner.org"])])
    new_key = TestJwtKey.create(agent.partner.trust_domain, "partner-key-2")
    agent.refresher.bundle = new_key.publish_in(agent.partner_jwt_key.publish_in(agent.partner.bundle(sequence=2)))
    token = new_key.mint(PAYMENTS, ["api"], agent.clock.now())
    response = await agent.stub.ValidateJWTSVID(
        workload_pb2.ValidateJWTSVIDRequest(audience="api", svid=token), metadata=SECURITY_HEADER
    )
    assert response.spiffe_id == str(PAYMENTS)
    assert agent.refresher.calls == [(agent.partner.trust_domain, "partner-key-2")]


async def test_a_key_the_cas_fresh_bundle_lacks_too_is_refused_saying_so(agent: Agent) -> None:
    await agent.publish([agent.ca.svid("/web", [ME], federates_with=["partner.org"])])
    agent.refresher.bundle = agent.partner_jwt_key.publish_in(agent.partner.bundle(sequence=2))
    token = TestJwtKey.create(agent.partner.trust_domain, "partner-key-2").mint(PAYMENTS, ["api"], agent.clock.now())
    error = await validate_error(agent, token)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{NEW_KEY_UNKNOWN}; the CA's fresh copy of partner.org's bundle lacks it too",
    )


async def test_an_unknown_key_is_refused_as_it_is_when_the_ca_cannot_be_asked(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    await agent.publish([agent.ca.svid("/web", [ME], federates_with=["partner.org"])])
    agent.refresher.error = UpstreamUnavailable("node API RefreshFederatedBundle at 127.0.0.1:8081 is unavailable")
    token = TestJwtKey.create(agent.partner.trust_domain, "partner-key-2").mint(PAYMENTS, ["api"], agent.clock.now())
    error = await validate_error(agent, token)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, NEW_KEY_UNKNOWN)
    assert "could not get a fresh bundle of partner.org from the CA for an unknown JWT key" in caplog.text


async def test_no_fresh_bundle_is_asked_for_a_trust_domain_the_caller_does_not_federate_with(agent: Agent) -> None:
    await agent.publish(
        [agent.ca.svid("/web", [ME]), agent.ca.svid("/batch", [STRANGER], federates_with=["partner.org"])]
    )
    token = TestJwtKey.create(agent.partner.trust_domain, "partner-key-2").mint(PAYMENTS, ["api"], agent.clock.now())
    assert (
        (await validate_error(agent, token)).details().startswith("JWT-SVID is not valid: no bundle for trust domain")
    )
    assert agent.refresher.calls == []


async def test_no_fresh_bundle_is_asked_for_an_unknown_key_of_the_own_trust_domain(agent: Agent) -> None:
    token = TestJwtKey.create(agent.ca.trust_domain, "unknown-key").mint(
        SpiffeId.parse("spiffe://example.org/web"), ["api"]
    )
    await validate_error(agent, token)
    assert agent.refresher.calls == []


async def test_validate_jwt_svid_rejects_token_for_another_audience(agent: Agent) -> None:
    token = agent.jwt_key.mint(SpiffeId.parse("spiffe://example.org/web"), ["billing"], agent.clock.now())
    bundle = agent.cache.get_snapshot().bundle
    assert bundle is not None
    with pytest.raises(JwtSvidError) as expected:
        validate_jwt_svid(token, audience=["api"], bundle_source=bundle, now=agent.clock.now())
    error = await rpc_error(
        agent.stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="api", svid=token), metadata=SECURITY_HEADER
        )
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"JWT-SVID is not valid: {expected.value}",
    )


async def test_validate_jwt_svid_rejects_token_signed_by_an_unknown_key(agent: Agent) -> None:
    stranger_key = TestJwtKey.create(TrustDomain("example.org"), "unknown-key")
    token = stranger_key.mint(SpiffeId.parse("spiffe://example.org/web"), ["api"], agent.clock.now())
    error = await rpc_error(
        agent.stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="api", svid=token), metadata=SECURITY_HEADER
        )
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "JWT-SVID is not valid: JWT-SVID key 'unknown-key' is not a JWT authority in the bundle of example.org; "
        "the key is unknown, removed, or the bundle is stale",
    )


async def test_validate_jwt_svid_rejects_expired_token(agent: Agent) -> None:
    issued = agent.clock.now()
    token = agent.jwt_key.mint(SpiffeId.parse("spiffe://example.org/web"), ["api"], issued)
    agent.clock.advance(timedelta(minutes=10))
    error = await rpc_error(
        agent.stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="api", svid=token), metadata=SECURITY_HEADER
        )
    )
    expiry = datetime.fromtimestamp(int((issued + timedelta(minutes=5)).timestamp()), UTC)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"JWT-SVID is not valid: JWT-SVID expired at {expiry.isoformat()} (now is {agent.clock.now().isoformat()}); "
        "fetch a fresh one",
    )


@pytest.mark.parametrize(
    ("request_message", "details"),
    [
        pytest.param(
            workload_pb2.ValidateJWTSVIDRequest(svid="a.b.c"),
            "audience is required: ValidateJWTSVID needs the audience this relying party answers to "
            "(SPIFFE_Workload_API.md §6.2.3)",
            id="audience",
        ),
        pytest.param(
            workload_pb2.ValidateJWTSVIDRequest(audience="api"),
            "svid is required: ValidateJWTSVID needs the token (SPIFFE_Workload_API.md §6.2.3)",
            id="svid",
        ),
    ],
)
async def test_validate_jwt_svid_requires_field(agent: Agent, request_message: Any, details: str) -> None:
    error = await rpc_error(agent.stub.ValidateJWTSVID(request_message, metadata=SECURITY_HEADER))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, details)


async def test_a_refused_request_is_freed_when_its_call_ends_not_by_the_garbage_collector(agent: Agent) -> None:
    """The agent's memory bound must not wait for the cyclic garbage collector: a refused call leaves no
    cycle that holds its request (sds.refusal)."""
    huge = workload_pb2.JWTSVIDRequest(audience=["x" * 1_000_000])
    with cyclic_garbage() as garbage:
        for _ in range(3):
            error = await rpc_error(agent.stub.FetchJWTSVID(huge, metadata=SECURITY_HEADER))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert frames_holding(garbage, workload_pb2.JWTSVIDRequest) == []
