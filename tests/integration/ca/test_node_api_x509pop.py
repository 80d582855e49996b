"""x509pop over the real node API (wire/node.proto ``AttestChallenge`` then ``Attest``): a brownfield
host proves possession of its enterprise certificate's key and gets its mapped agent ID; an expired,
revoked, untrusted-CA or over-long chain is refused with a message that says which; every outcome is
audited; an answer works once. The CA's trust comes from a ``[bridge]`` configuration and its challenges
from the datastore, as ``ca.server`` wires them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from bridge.mapping import MappingRule, Match
from bridge.possession import SigningKey, load_signing_key
from bridge.x509pop import USED, X509POP, encode_response, sign_challenge
from ca.attestation import NodeAttestor
from ca.bridge_attestation import DatastoreChallenges, x509pop_attestor
from ca.config import BridgeConfig
from ca.ratelimit import NodeApiGuard, NodeApiLimits, Rate
from ca.store import AgentRepository, AuditLogRepository, Database
from ca.store.records import AuditEvent, AuditQuery
from spiffe_core.clock import Clock
from spiffe_core.errors import ConfigError
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId
from spiffe_core.x509_svid import verify_x509_svid
from tests.integration.ca.test_node_api import (
    RPC_TIMEOUT,
    TD,
    RunningCa,
    channel,
    csr_for,
    details,
    refused,
    running_node_api,
)
from tests.support.enterprise_pki import REFUSED_HOSTS, EnterprisePki, HostFiles
from tests.support.x509pop import MemoryChallengeLedger
from wire import node_pb2, node_pb2_grpc

RunningCaContext = AbstractAsyncContextManager[RunningCa]
RULES = (MappingRule("payments", Match(dns="*.payments.corp.example.com"), "/legacy/payments/{host}"),)
WEB01 = SpiffeId.parse("spiffe://example.org/trustmesh/agent/x509pop/legacy/payments/web01")


def x509pop_ca(tmp_path: Path, enterprise_pki: EnterprisePki, guard: NodeApiGuard | None = None) -> RunningCaContext:
    bridge = BridgeConfig(trust_anchors={"corp": enterprise_pki.root}, crls=[enterprise_pki.crl])

    def attestor(database: Database, clock: Clock) -> NodeAttestor:
        return x509pop_attestor(bridge, TD, lambda: RULES, DatastoreChallenges(database, clock))

    return running_node_api(tmp_path, attestor, guard=guard)


@pytest.fixture
async def ca(tmp_path: Path, enterprise_pki: EnterprisePki) -> AsyncIterator[RunningCa]:
    async with x509pop_ca(tmp_path, enterprise_pki) as running:
        yield running


def host_key(host: HostFiles) -> SigningKey:
    return load_signing_key(host.key.read_bytes(), str(host.key))


async def challenge(stub: node_pb2_grpc.NodeStub, host: HostFiles) -> bytes:
    request = node_pb2.AttestChallengeRequest(method=X509POP, payload=host.chain.read_bytes(), trust_domain=TD.name)
    response: node_pb2.AttestChallengeResponse = await stub.AttestChallenge(request, timeout=RPC_TIMEOUT)
    return response.challenge


async def x509pop_attest(ca: RunningCa, host: HostFiles, key: SigningKey | None = None) -> node_pb2.AttestResponse:
    """Both steps, answering the challenge with ``key`` (default: the host's own)."""
    async with channel(ca, ca.attestation_port) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        nonce = await challenge(stub, host)
        answer = encode_response(nonce, sign_challenge(key or host_key(host), nonce), host.chain.read_bytes())
        return await attest_with(stub, answer)


async def attest_with(stub: node_pb2_grpc.NodeStub, answer: bytes) -> node_pb2.AttestResponse:
    csr = csr_for(generate_private_key(KeyType.EC_P256))
    request = node_pb2.AttestRequest(method=X509POP, payload=answer, csr=csr, trust_domain=TD.name)
    response: node_pb2.AttestResponse = await stub.Attest(request, timeout=RPC_TIMEOUT)
    return response


def attestation_records(ca: RunningCa) -> list[AuditEvent]:
    with ca.database.transaction() as session:
        return [r.event for r in AuditLogRepository(session).list(AuditQuery(action="agent.attest"))]


async def test_a_host_proving_its_enterprise_key_gets_its_mapped_agent_id_and_svid(
    ca: RunningCa, enterprise_pki: EnterprisePki
) -> None:
    response = await x509pop_attest(ca, enterprise_pki.web)

    assert response.spiffe_id == str(WEB01)
    chain = [x509.load_der_x509_certificate(der) for der in response.svid_chain]
    assert verify_x509_svid(chain, ca.bundle(), ca.clock.now())[0] == WEB01
    with ca.database.transaction() as session:
        assert AgentRepository(session).get(WEB01).attestation_type == X509POP
    (record,) = attestation_records(ca)
    assert (record.outcome, record.detail["method"]) == ("ok", X509POP)


@pytest.mark.parametrize(
    ("host", "reason"),
    REFUSED_HOSTS,
)
async def test_a_refused_chain_is_told_which_check_failed_and_audited(
    ca: RunningCa, enterprise_pki: EnterprisePki, host: str, reason: str
) -> None:
    error = await refused(x509pop_attest(ca, getattr(enterprise_pki, host)))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert details(error).startswith(f"{reason}: ")
    (record,) = attestation_records(ca)
    assert (record.outcome, record.reason, record.detail["method"]) == ("denied", details(error), X509POP)


async def test_an_answer_signed_by_another_key_is_refused(ca: RunningCa, enterprise_pki: EnterprisePki) -> None:
    error = await refused(x509pop_attest(ca, enterprise_pki.web, key=host_key(enterprise_pki.db)))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "proof of possession failed" in details(error)


async def test_an_answer_replayed_to_the_node_api_is_refused_as_used(
    ca: RunningCa, enterprise_pki: EnterprisePki
) -> None:
    web = enterprise_pki.web
    async with channel(ca, ca.attestation_port) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        nonce = await challenge(stub, web)
        answer = encode_response(nonce, sign_challenge(host_key(web), nonce), web.chain.read_bytes())
        await attest_with(stub, answer)
        error = await refused(attest_with(stub, answer))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert details(error) == USED


async def test_a_host_no_mapping_rule_matches_is_refused_naming_that(
    ca: RunningCa, enterprise_pki: EnterprisePki
) -> None:
    error = await refused(x509pop_attest(ca, enterprise_pki.db))  # db01.data: no rule for *.data here

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no mapping rule" in details(error)


async def test_a_method_without_a_challenge_step_is_refused_at_attest_challenge(ca: RunningCa) -> None:
    async with channel(ca, ca.attestation_port) as ch:
        request = node_pb2.AttestChallengeRequest(method="join_token", payload=b"x", trust_domain=TD.name)
        error = await refused(node_pb2_grpc.NodeStub(ch).AttestChallenge(request, timeout=RPC_TIMEOUT))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error) == "attestation method 'join_token' has no challenge step; call Attest directly"


async def test_each_step_counts_against_the_attestation_rate_of_its_source_and_a_refusal_is_audited(
    tmp_path: Path, enterprise_pki: EnterprisePki
) -> None:
    guard = NodeApiGuard(NodeApiLimits(attestation=Rate(0.001, 2)))  # one x509pop attestation: two calls
    async with x509pop_ca(tmp_path, enterprise_pki, guard) as ca:
        await x509pop_attest(ca, enterprise_pki.web)
        error = await refused(x509pop_attest(ca, enterprise_pki.web))

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details(error).startswith("too many attestations from 127.0.0.1 ")
        refusal = attestation_records(ca)[-1]
        assert (refusal.outcome, refusal.detail["method"], refusal.actor.name) == (
            "denied",
            X509POP,
            "attestation:127.0.0.1",
        )


def test_a_trust_anchor_file_that_cannot_be_read_stops_the_ca_at_start_up(tmp_path: Path) -> None:
    missing = tmp_path / "corp-root.pem"
    bridge = BridgeConfig(trust_anchors={"corp": missing})

    with pytest.raises(ConfigError) as raised:
        x509pop_attestor(bridge, TD, lambda: RULES, MemoryChallengeLedger())

    assert str(raised.value) == (
        f"bridge: cannot read trust anchor {missing} (No such file or directory); "
        "fix bridge.trust_anchors / bridge.crls"
    )
