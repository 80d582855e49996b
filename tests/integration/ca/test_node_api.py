"""The node API as an agent meets it (wire/node.proto): a real CA service on SQLite, the real gRPC server
with both TLS listeners on 127.0.0.1, and a raw client built from the generated stubs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.agents import AgentAdmin
from ca.attestation import JoinTokens, NodeAttestor, NodeAttestors
from ca.audit import Issuance
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.entries import EntryPolicy, RegistrationEntries
from ca.issuance import TtlPolicy, X509SvidRequest
from ca.keys.base import KeyManager
from ca.keys.memory import MemoryKeyManager
from ca.legacy_roots import LegacyRootFiles
from ca.metrics import CaMetrics
from ca.node_api import NodeServicer, build_node_server, run_node_server
from ca.node_service import NodeService
from ca.ratelimit import NodeApiGuard
from ca.server_identity import ServerIdentity
from ca.service import CaService
from ca.signing import digest_for
from ca.store import AgentRepository, AuditLogRepository, Database, EntrySpec, RegistrationEntry
from ca.sync import ChangeHub, UpdateVersions
from ca.upstream import SelfSignedUpstream
from spiffe_core.bundle import Bundle
from spiffe_core.errors import AlreadyExists, ConfigError
from spiffe_core.jwt_svid import validate_jwt_svid
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import verify_x509_svid
from tests.support.clock import FakeClock
from tests.support.store import TESTER
from wire import node_pb2, node_pb2_grpc

TD = TrustDomain("example.org")
SERVER_NAME = "trustmesh-ca"
AGENT_TTL = timedelta(hours=1)
REFUSED = "join token unknown, used or expired; ask an operator for a new join token"
NODE_1 = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
NODE_2 = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-2")
WEB = SpiffeId.parse("spiffe://example.org/web")
# Every wait in these tests is bounded; a push must arrive well within DESIGN §1's 2 s.
PUSH_DEADLINE = 2.0
RPC_TIMEOUT = 10.0
LEGACY_ROOTS_CHECK_INTERVAL = 0.05


@dataclass
class RunningCa:
    database: Database
    service: CaService
    entries: RegistrationEntries
    join_tokens: JoinTokens
    clock: FakeClock
    identity: ServerIdentity
    attestation_port: int
    node_api_port: int
    agents: AgentAdmin
    metrics: CaMetrics
    hub: ChangeHub

    def bundle(self) -> Bundle:
        return self.service.get_bundle()

    def entry(self, spiffe_id: SpiffeId, parent: SpiffeId, *dns: str) -> RegistrationEntry:
        spec = EntrySpec(spiffe_id, parent, frozenset({Selector("unix", "uid:1000")}), dns_names=dns)
        return self.entries.create(spec, TESTER)


@dataclass
class Agent:
    spiffe_id: SpiffeId
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]


@pytest.fixture
async def ca(tmp_path: Path) -> AsyncIterator[RunningCa]:
    async with running_node_api(tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def running_node_api(
    tmp_path: Path,
    *attestors: Callable[[Database, FakeClock], NodeAttestor],
    guard: NodeApiGuard | None = None,
    legacy_roots: Mapping[str, Path] | None = None,
    attestation_address: str = "127.0.0.1:0",
    key_manager: KeyManager | None = None,
) -> AsyncIterator[RunningCa]:
    """A CA service on SQLite in ``tmp_path`` serving the node API on free ports (the attestation
    listener on ``attestation_address``), attesting with join tokens and ``attestors`` (each built over
    the CA's datastore and clock), under ``guard``'s limits (default: the default limits), with the
    ``[bridge] legacy_roots`` files ``legacy_roots`` (none by default) checked every 50 ms, its keys in
    ``key_manager`` (default: in memory)."""
    database = Database.open(f"sqlite:///{tmp_path / 'ca.db'}")
    database.migrate()
    clock = FakeClock(datetime.now(UTC))
    authorities = AuthorityManager(
        database,
        key_manager or MemoryKeyManager(),
        SelfSignedUpstream(),
        AuthorityParams(TD, KeyType.EC_P256, KeyType.EC_P256, timedelta(days=7), timedelta(minutes=5)),
        clock,
    )
    authorities.load()
    metrics = CaMetrics()
    service = CaService(
        database=database,
        authorities=authorities,
        x509_ttl=TtlPolicy(timedelta(hours=1), timedelta(hours=24)),
        jwt_ttl=TtlPolicy(timedelta(minutes=5), timedelta(hours=1)),
        clock=clock,
        metrics=metrics,
    )
    hub = ChangeHub()
    entries = RegistrationEntries(database, hub, EntryPolicy(TD, timedelta(hours=24), timedelta(hours=1)), clock)
    join_tokens = JoinTokens(database, TD, clock)
    root_files = LegacyRootFiles(legacy_roots or {}, hub, LEGACY_ROOTS_CHECK_INTERVAL)
    root_files.load()
    node = NodeService(
        database=database,
        issuer=service,
        authorities=authorities,
        entries=entries,
        attestors=NodeAttestors.of(join_tokens, *(attestor(database, clock) for attestor in attestors)),
        agent_svid_ttl=AGENT_TTL,
        clock=clock,
        hub=hub,
        legacy_roots=root_files.get_roots,
        metrics=metrics,
    )
    identity = ServerIdentity(service, TD, SERVER_NAME, clock, lambda: authorities.get_current().active_x509().id)
    identity.rotate()
    server, ports = build_node_server(
        NodeServicer(node, hub, UpdateVersions(), clock, guard, metrics=metrics),
        identity,
        service.get_bundle,
        attestation_address=attestation_address,
        node_api_address="127.0.0.1:0",
    )
    serving = asyncio.create_task(run_node_server(server))
    watching = asyncio.create_task(root_files.run())
    try:
        yield RunningCa(
            database,
            service,
            entries,
            join_tokens,
            clock,
            identity,
            ports.attestation,
            ports.node_api,
            AgentAdmin(database, hub, clock),
            metrics,
            hub,
        )
    finally:
        serving.cancel()
        watching.cancel()
        await asyncio.gather(serving, watching, return_exceptions=True)
        database.close()


def csr_for(key: PrivateKey) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, digest_for(key)).public_bytes(serialization.Encoding.DER)


def pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def channel(ca: RunningCa, port: int, agent: Agent | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.bundle().x509_authorities_pem(),
        private_key=None
        if agent is None
        else agent.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        certificate_chain=None if agent is None else pem(agent.chain),
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
    )


async def attest(ca: RunningCa, token: str, key: PrivateKey | None = None) -> node_pb2.AttestResponse:
    key = key or generate_private_key(KeyType.EC_P256)
    async with channel(ca, ca.attestation_port) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        request = node_pb2.AttestRequest(method="join_token", payload=token.encode(), csr=csr_for(key))
        response: node_pb2.AttestResponse = await stub.Attest(request, timeout=RPC_TIMEOUT)
    return response


async def attested_agent(ca: RunningCa, name: str = "node-1") -> Agent:
    key = generate_private_key(KeyType.EC_P256)
    token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name=name).token
    response = await attest(ca, token, key)
    chain = tuple(x509.load_der_x509_certificate(der) for der in response.svid_chain)
    return Agent(SpiffeId.parse(response.spiffe_id), key, chain)


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def details(error: grpc.aio.AioRpcError) -> str:
    return error.details() or ""


# --- Attest -------------------------------------------------------------------------------------------


async def test_attest_with_a_join_token_returns_an_agent_svid_that_verifies_against_the_bundle(
    ca: RunningCa,
) -> None:
    token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1").token
    response = await attest(ca, token)
    chain = [x509.load_der_x509_certificate(der) for der in response.svid_chain]
    bundle = Bundle.parse_jwks(TD, response.bundle)
    assert response.spiffe_id == str(NODE_1)
    assert verify_x509_svid(chain, bundle, datetime.now(UTC))[0] == NODE_1
    assert chain[0].not_valid_after_utc - ca.clock.now() <= AGENT_TTL


async def test_attest_records_the_agent_and_the_svid_it_holds(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    with ca.database.transaction() as session:
        stored = AgentRepository(session).get(NODE_1)
    assert (stored.attestation_type, stored.serial, stored.banned) == (
        "join_token",
        agent.chain[0].serial_number,
        False,
    )


async def test_a_join_token_attests_only_once(ca: RunningCa) -> None:
    token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1").token
    await attest(ca, token)
    error = await refused(attest(ca, token))
    assert (error.code(), details(error)) == (grpc.StatusCode.PERMISSION_DENIED, REFUSED)


async def test_an_expired_join_token_is_refused(ca: RunningCa) -> None:
    token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1").token
    ca.clock.advance(timedelta(hours=1, seconds=1))
    error = await refused(attest(ca, token))
    assert (error.code(), details(error)) == (grpc.StatusCode.PERMISSION_DENIED, REFUSED)


async def test_an_unknown_join_token_is_refused(ca: RunningCa) -> None:
    error = await refused(attest(ca, "not-a-token-anyone-generated"))
    assert (error.code(), details(error)) == (grpc.StatusCode.PERMISSION_DENIED, REFUSED)


async def test_a_malformed_csr_does_not_spend_the_join_token(ca: RunningCa) -> None:
    token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1").token
    async with channel(ca, ca.attestation_port) as ch:
        request = node_pb2.AttestRequest(method="join_token", payload=token.encode(), csr=b"not a CSR")
        error = await refused(node_pb2_grpc.NodeStub(ch).Attest(request, timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error).startswith("CSR is not a PKCS#10 certificate request")
    assert (await attest(ca, token)).spiffe_id == str(NODE_1)


async def test_an_unknown_attestation_method_is_invalid(ca: RunningCa) -> None:
    async with channel(ca, ca.attestation_port) as ch:
        request = node_pb2.AttestRequest(method="tpm", payload=b"x", csr=csr_for(generate_private_key(KeyType.EC_P256)))
        error = await refused(node_pb2_grpc.NodeStub(ch).Attest(request, timeout=RPC_TIMEOUT))
    assert (error.code(), details(error)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "attestation method 'tpm' is not enabled on this CA; enabled: join_token",
    )


def served_certificate(ca: RunningCa, port: int) -> x509.Certificate:
    """The certificate a fresh TLS handshake with the listener presents."""
    context = ssl.create_default_context(cadata=ca.bundle().x509_authorities_pem().decode())
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_a_port_grpc_cannot_bind_is_refused_as_in_use_naming_the_key(tmp_path: Path) -> None:
    key = "server.attestation_address"
    with socket.socket() as holder:  # another listener, without SO_REUSEPORT
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(ConfigError) as refused:
            async with running_node_api(tmp_path, attestation_address=address):
                pass
    assert str(refused.value) == f"{key} {address} is in use; stop what listens there or set {key} to a free port"


async def test_listeners_serve_the_cas_own_svid_with_the_server_name(ca: RunningCa) -> None:
    served = await asyncio.to_thread(served_certificate, ca, ca.attestation_port)
    assert verify_x509_svid([served], ca.bundle(), datetime.now(UTC))[0] == SpiffeId.parse(
        "spiffe://example.org/trustmesh/server"
    )
    assert served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [SERVER_NAME]


async def test_a_renewed_serving_svid_is_used_from_the_next_handshake(ca: RunningCa) -> None:
    before = await asyncio.to_thread(served_certificate, ca, ca.attestation_port)
    renewed = ca.identity.rotate()
    after = await asyncio.to_thread(served_certificate, ca, ca.attestation_port)
    assert after != before
    assert after.public_bytes(serialization.Encoding.PEM) == renewed.cert_chain_pem


# --- Authentication -----------------------------------------------------------------------------------


AGENT_RPCS = [
    pytest.param(
        lambda stub: stub.RenewAgent(node_pb2.RenewAgentRequest(csr=b""), timeout=RPC_TIMEOUT), id="RenewAgent"
    ),
    pytest.param(lambda stub: stub.SignX509Svids(node_pb2.SignX509SvidsRequest(), timeout=RPC_TIMEOUT), id="Sign"),
    pytest.param(
        lambda stub: stub.MintJwtSvid(node_pb2.MintJwtSvidRequest(entry_id="e", audience=["a"]), timeout=RPC_TIMEOUT),
        id="MintJwtSvid",
    ),
    pytest.param(lambda stub: stub.Sync(node_pb2.SyncRequest(), timeout=RPC_TIMEOUT).read(), id="Sync"),
]


@pytest.mark.parametrize("call", AGENT_RPCS)
async def test_agent_rpcs_without_a_client_certificate_are_unauthenticated(
    ca: RunningCa, call: Callable[[Any], Awaitable[object]]
) -> None:
    async with channel(ca, ca.attestation_port) as ch:
        error = await refused(call(node_pb2_grpc.NodeStub(ch)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details(error).startswith("no client certificate; call the node API over mTLS")


async def test_the_node_api_listener_refuses_a_client_without_a_certificate(ca: RunningCa) -> None:
    async with channel(ca, ca.node_api_port) as ch:
        error = await refused(node_pb2_grpc.NodeStub(ch).SignX509Svids(node_pb2.SignX509SvidsRequest(), timeout=5))
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails: no RPC reaches the CA


async def test_a_workload_svid_is_not_an_agent(ca: RunningCa) -> None:
    key = generate_private_key(KeyType.EC_P256)
    (issued,) = ca.service.mint_x509_svids([X509SvidRequest(csr_for(key), WEB)], Issuance(TESTER))
    workload = Agent(WEB, key, issued.cert_chain)
    async with channel(ca, ca.node_api_port, workload) as ch:
        error = await refused(node_pb2_grpc.NodeStub(ch).SignX509Svids(node_pb2.SignX509SvidsRequest(), timeout=5))
    assert (error.code(), details(error)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "spiffe://example.org/web is not an agent ID; the node API serves only agents "
        "(spiffe://example.org/trustmesh/agent/...)",
    )


async def test_a_banned_agent_is_refused(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    with ca.database.transaction() as session:
        AgentRepository(session).set_banned(agent.spiffe_id, True, ca.clock.now())
    async with channel(ca, ca.node_api_port, agent) as ch:
        error = await refused(node_pb2_grpc.NodeStub(ch).SignX509Svids(node_pb2.SignX509SvidsRequest(), timeout=5))
    assert (error.code(), details(error)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"agent {NODE_1} is banned; an operator must lift the ban",
    )


async def test_renew_agent_signs_a_new_key_for_the_same_agent_id(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    new_key = generate_private_key(KeyType.EC_P256)
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).RenewAgent(
            node_pb2.RenewAgentRequest(csr=csr_for(new_key)), timeout=RPC_TIMEOUT
        )
    chain = [x509.load_der_x509_certificate(der) for der in response.svid_chain]
    assert verify_x509_svid(chain, ca.bundle(), datetime.now(UTC))[0] == NODE_1
    assert chain[0].public_key() == new_key.public_key()
    with ca.database.transaction() as session:
        assert AgentRepository(session).get(NODE_1).serial == chain[0].serial_number


# --- Sync ---------------------------------------------------------------------------------------------


async def test_sync_sends_the_bundle_and_only_the_agents_entries_at_once(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    mine = ca.entry(WEB, NODE_1, "web.example.org")
    ca.entry(SpiffeId.parse("spiffe://example.org/db"), NODE_2)
    async with channel(ca, ca.node_api_port, agent) as ch:
        stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
        first = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        stream.cancel()
    assert Bundle.parse_jwks(TD, first.bundle) == ca.bundle()
    assert [(e.id, e.spiffe_id, e.parent_id, list(e.dns_names), e.revision) for e in first.entries] == [
        (mine.id, str(WEB), str(NODE_1), ["web.example.org"], 1)
    ]
    assert list(first.entries[0].selectors) == ["unix:uid:1000"]


async def test_sync_pushes_a_new_entry_within_two_seconds(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    async with channel(ca, ca.node_api_port, agent) as ch:
        stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
        first = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        assert list(first.entries) == []
        created = await asyncio.to_thread(ca.entry, WEB, NODE_1)
        pushed = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        stream.cancel()
    assert [e.id for e in pushed.entries] == [created.id]
    assert pushed.version > first.version


async def test_sync_pushes_updates_and_deletions(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    created = ca.entry(WEB, NODE_1)
    async with channel(ca, ca.node_api_port, agent) as ch:
        stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
        await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        changed = EntrySpec(WEB, NODE_1, frozenset({Selector("unix", "uid:1000")}), hint="blue")
        await asyncio.to_thread(ca.entries.update, created.id, changed, TESTER)
        updated = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        await asyncio.to_thread(ca.entries.delete, created.id, TESTER)
        deleted = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        stream.cancel()
    assert [(e.hint, e.revision) for e in updated.entries] == [("blue", 2)]
    assert list(deleted.entries) == []


async def test_sync_stays_quiet_when_another_agents_entries_change(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    async with channel(ca, ca.node_api_port, agent) as ch:
        stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
        await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        await asyncio.to_thread(ca.entry, WEB, NODE_2)
        # Nothing was sent for that: the next message is the one about node-1's own new entry.
        mine = await asyncio.to_thread(ca.entry, SpiffeId.parse("spiffe://example.org/db"), NODE_1)
        pushed = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        stream.cancel()
    assert [e.id for e in pushed.entries] == [mine.id]


async def test_sync_ends_unauthenticated_when_the_svid_it_was_opened_with_expires(ca: RunningCa) -> None:
    """The agent reconnects with its renewed SVID; a stream must not outlive the credential it was
    opened with."""
    agent = await attested_agent(ca)
    ca.clock.advance(AGENT_TTL - timedelta(seconds=1))
    async with channel(ca, ca.node_api_port, agent) as ch:
        stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
        await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ended.value.details().startswith("the X509-SVID this stream was opened with expired at ")
    assert ended.value.details().endswith("; reconnect with the renewed SVID")


# --- SignX509Svids and MintJwtSvid --------------------------------------------------------------------


async def test_sign_refuses_another_agents_entry_per_item_and_signs_the_authorized_one(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    mine = ca.entry(WEB, NODE_1, "web.example.org")
    theirs = ca.entry(SpiffeId.parse("spiffe://example.org/db"), NODE_2)
    key = generate_private_key(KeyType.EC_P256)
    request = node_pb2.SignX509SvidsRequest(
        requests=[
            node_pb2.X509SvidRequest(entry_id=theirs.id, csr=csr_for(generate_private_key(KeyType.EC_P256))),
            node_pb2.X509SvidRequest(entry_id=mine.id, csr=csr_for(key)),
        ]
    )
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    refused_item, signed_item = response.svids
    assert (refused_item.entry_id, list(refused_item.cert_chain), refused_item.error) == (
        theirs.id,
        [],
        f"entry {theirs.id} is not parented to {NODE_1}",
    )
    chain = [x509.load_der_x509_certificate(der) for der in signed_item.cert_chain]
    assert (signed_item.entry_id, signed_item.error) == (mine.id, "")
    assert verify_x509_svid(chain, ca.bundle(), datetime.now(UTC))[0] == WEB
    assert chain[0].public_key() == key.public_key()
    assert chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["web.example.org"]


async def test_sign_refuses_only_the_item_with_a_broken_csr(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    web = ca.entry(WEB, NODE_1)
    db = ca.entry(SpiffeId.parse("spiffe://example.org/db"), NODE_1)
    request = node_pb2.SignX509SvidsRequest(
        requests=[
            node_pb2.X509SvidRequest(entry_id=web.id, csr=b"broken"),
            node_pb2.X509SvidRequest(entry_id=db.id, csr=csr_for(generate_private_key(KeyType.EC_P256))),
        ]
    )
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    broken, good = response.svids
    assert broken.error.startswith("CSR is not a PKCS#10 certificate request")
    assert list(broken.cert_chain) == []
    assert (good.error, len(good.cert_chain)) == ("", 1)


async def test_mint_jwt_svid_returns_a_token_that_validates_against_the_bundle(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    mine = ca.entry(WEB, NODE_1)
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).MintJwtSvid(
            node_pb2.MintJwtSvidRequest(entry_id=mine.id, audience=["payments"]), timeout=RPC_TIMEOUT
        )
    svid = validate_jwt_svid(response.token, audience="payments", bundle_source=ca.bundle(), now=datetime.now(UTC))
    assert svid.spiffe_id == WEB
    assert response.expires_at == int((ca.clock.now() + timedelta(minutes=5)).timestamp())


@pytest.mark.parametrize(
    ("parent", "audience", "code", "message"),
    [
        pytest.param(
            NODE_2,
            ["payments"],
            grpc.StatusCode.PERMISSION_DENIED,
            "entry {id} is not parented to {agent}",
            id="foreign",
        ),
        pytest.param(
            NODE_1,
            [],
            grpc.StatusCode.INVALID_ARGUMENT,
            "a JWT-SVID needs at least one audience (JWT-SVID.md §3.2); pass e.g. ['payments']",
            id="no-audience",
        ),
        pytest.param(
            NODE_1,
            ["x" * 1_000_000],
            grpc.StatusCode.INVALID_ARGUMENT,
            f"audience #0 {'x' * 32!r}… is 1000000 bytes long; an audience may be at most 1024 bytes (UTF-8) — "
            "name the relying party with a shorter string",
            id="oversized-audience",
        ),
        pytest.param(
            NODE_1,
            [f"svc-{n}" for n in range(33)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "33 audiences requested; a JWT-SVID carries at most 32 — ask for one token per relying party",
            id="too-many-audiences",
        ),
        pytest.param(
            NODE_1,
            ["db\r\nx"],
            grpc.StatusCode.INVALID_ARGUMENT,
            "audience #0 'db\\r\\nx' holds the non-printable character U+000D; audiences are printable text — "
            "remove control characters and line breaks",
            id="control-character",
        ),
    ],
)
async def test_mint_jwt_svid_refuses(
    ca: RunningCa, parent: SpiffeId, audience: list[str], code: grpc.StatusCode, message: str
) -> None:
    agent = await attested_agent(ca)
    entry = ca.entry(WEB, parent)
    async with channel(ca, ca.node_api_port, agent) as ch:
        error = await refused(
            node_pb2_grpc.NodeStub(ch).MintJwtSvid(
                node_pb2.MintJwtSvidRequest(entry_id=entry.id, audience=audience), timeout=RPC_TIMEOUT
            )
        )
    assert (error.code(), details(error)) == (code, message.format(id=entry.id, agent=NODE_1))


# --- Cutting agents off: replaced SVIDs, ban, evict; one node name, one agent; trust domain ---------------


SUPERSEDED = (
    "the X509-SVID with serial {serial:x} is no longer the SVID of agent "
    "spiffe://example.org/trustmesh/agent/join_token/node-1 (it was renewed, or the node attested again); "
    "use the agent's current SVID, or attest this node again with a new join token"
)


async def renewed(ca: RunningCa, agent: Agent) -> Agent:
    new_key = generate_private_key(KeyType.EC_P256)
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).RenewAgent(
            node_pb2.RenewAgentRequest(csr=csr_for(new_key)), timeout=RPC_TIMEOUT
        )
    return Agent(agent.spiffe_id, new_key, tuple(x509.load_der_x509_certificate(d) for d in response.svid_chain))


async def sign_nothing(ca: RunningCa, agent: Agent) -> node_pb2.SignX509SvidsResponse:
    async with channel(ca, ca.node_api_port, agent) as ch:
        response: node_pb2.SignX509SvidsResponse = await node_pb2_grpc.NodeStub(ch).SignX509Svids(
            node_pb2.SignX509SvidsRequest(), timeout=RPC_TIMEOUT
        )
    return response


async def test_an_agent_svid_replaced_by_renewal_is_refused_once_the_overlap_ends(ca: RunningCa) -> None:
    old = await attested_agent(ca)
    await renewed(ca, old)
    ca.clock.advance(timedelta(seconds=31))
    error = await refused(sign_nothing(ca, old))
    assert (error.code(), details(error)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        SUPERSEDED.format(serial=old.chain[0].serial_number),
    )


async def test_an_agent_svid_replaced_by_renewal_still_works_during_the_overlap(ca: RunningCa) -> None:
    old = await attested_agent(ca)
    await renewed(ca, old)
    ca.clock.advance(timedelta(seconds=29))
    assert list((await sign_nothing(ca, old)).svids) == []


async def test_the_renewed_agent_svid_works_after_the_overlap(ca: RunningCa) -> None:
    new = await renewed(ca, await attested_agent(ca))
    ca.clock.advance(timedelta(seconds=31))
    assert list((await sign_nothing(ca, new)).svids) == []


async def test_an_agent_svid_replaced_by_reattestation_is_refused_at_once(ca: RunningCa) -> None:
    old = await attested_agent(ca)
    token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1", replace=True).token
    await attest(ca, token)
    error = await refused(sign_nothing(ca, old))
    assert (error.code(), details(error)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        SUPERSEDED.format(serial=old.chain[0].serial_number),
    )


async def test_reattestation_ends_the_sync_stream_of_the_replaced_svid(ca: RunningCa) -> None:
    old = await attested_agent(ca)
    token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1", replace=True).token
    async with channel(ca, ca.node_api_port, old) as ch:
        stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
        await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        await attest(ca, token)
        error = await refused(asyncio.wait_for(stream.read(), PUSH_DEADLINE))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_banned_agents_open_sync_stream_ends_within_one_second(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    async with channel(ca, ca.node_api_port, agent) as ch:
        stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
        await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.to_thread(ca.agents.ban, agent.spiffe_id, TESTER)
        error = await refused(asyncio.wait_for(stream.read(), PUSH_DEADLINE))
        elapsed = loop.time() - started
    assert (error.code(), details(error)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"agent {NODE_1} is banned; an operator must lift the ban",
    )
    assert elapsed < 1.0


async def test_a_banned_agent_may_not_renew_or_attest_again(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1", replace=True).token
    ca.agents.ban(agent.spiffe_id, TESTER)
    renew_error = await refused(renewed(ca, agent))
    attest_error = await refused(attest(ca, token))
    assert (renew_error.code(), attest_error.code()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert details(attest_error) == (f"agent {NODE_1} is banned; an operator must lift the ban before it can attest")


async def test_unban_lets_the_agents_svid_work_again(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    ca.agents.ban(agent.spiffe_id, TESTER)
    ca.agents.unban(agent.spiffe_id, TESTER)
    assert list((await sign_nothing(ca, agent)).svids) == []


async def test_an_evicted_agents_svid_is_refused_and_its_stream_ends(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    async with channel(ca, ca.node_api_port, agent) as ch:
        stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
        await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
        await asyncio.to_thread(ca.agents.evict, agent.spiffe_id, TESTER)
        stream_error = await refused(asyncio.wait_for(stream.read(), PUSH_DEADLINE))
    call_error = await refused(sign_nothing(ca, agent))
    assert stream_error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (call_error.code(), details(call_error)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        f"agent {NODE_1} is not known to this CA; attest the node again",
    )


async def _cut_off(ca: RunningCa, agent: Agent, how: str) -> None:
    if how == "ban":
        await asyncio.to_thread(ca.agents.ban, agent.spiffe_id, TESTER)
    elif how == "evict":
        await asyncio.to_thread(ca.agents.evict, agent.spiffe_id, TESTER)
    else:  # the node attests again: its old SVID is replaced at once
        token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1", replace=True).token
        await attest(ca, token)


@pytest.mark.parametrize("how", ["ban", "evict", "reattest"])
async def test_an_agent_answered_from_the_cache_is_refused_on_its_first_call_after_being_cut_off(
    ca: RunningCa, how: str
) -> None:
    agent = await attested_agent(ca)
    for _ in range(2):  # the second call is answered from the cache (ca.node_cache)
        assert list((await sign_nothing(ca, agent)).svids) == []
    await _cut_off(ca, agent, how)
    error = await refused(sign_nothing(ca, agent))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_renewal_overlap_ends_exactly_for_an_svid_answered_from_the_cache(ca: RunningCa) -> None:
    old = await attested_agent(ca)
    await renewed(ca, old)
    ca.clock.advance(timedelta(seconds=29))
    for _ in range(2):
        assert list((await sign_nothing(ca, old)).svids) == []
    ca.clock.advance(timedelta(seconds=2))
    error = await refused(sign_nothing(ca, old))
    assert (error.code(), details(error)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        SUPERSEDED.format(serial=old.chain[0].serial_number),
    )


async def sign_for(ca: RunningCa, agent: Agent, entry_id: str) -> node_pb2.SignedX509Svid:
    request = node_pb2.SignX509SvidsRequest(
        requests=[node_pb2.X509SvidRequest(entry_id=entry_id, csr=csr_for(generate_private_key(KeyType.EC_P256)))]
    )
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    (item,) = response.svids
    return item


async def test_an_entry_is_signable_on_the_first_call_after_it_is_created_and_refused_after_it_is_deleted(
    ca: RunningCa,
) -> None:
    agent = await attested_agent(ca)
    assert (await sign_for(ca, agent, "not-yet")).error == f"entry not-yet is not parented to {NODE_1}"
    created = await asyncio.to_thread(ca.entry, WEB, NODE_1)
    assert (await sign_for(ca, agent, created.id)).error == ""
    await asyncio.to_thread(ca.entries.delete, created.id, TESTER)
    assert (await sign_for(ca, agent, created.id)).error == f"entry {created.id} is not parented to {NODE_1}"


async def test_an_entry_moved_to_another_agent_is_refused_on_the_first_call_after_the_move(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    created = ca.entry(WEB, NODE_1)
    assert (await sign_for(ca, agent, created.id)).error == ""
    moved = EntrySpec(WEB, NODE_2, frozenset({Selector("unix", "uid:1000")}))
    await asyncio.to_thread(ca.entries.update, created.id, moved, TESTER)
    assert (await sign_for(ca, agent, created.id)).error == f"entry {created.id} is not parented to {NODE_1}"


async def test_mint_jwt_svid_refuses_an_unknown_entry_as_it_refuses_another_agents(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    theirs = ca.entry(WEB, NODE_2)
    async with channel(ca, ca.node_api_port, agent) as ch:
        errors = [
            await refused(
                node_pb2_grpc.NodeStub(ch).MintJwtSvid(
                    node_pb2.MintJwtSvidRequest(entry_id=entry_id, audience=["payments"]), timeout=RPC_TIMEOUT
                )
            )
            for entry_id in (theirs.id, "no-such-entry")
        ]
    assert [(e.code(), details(e)) for e in errors] == [
        (grpc.StatusCode.PERMISSION_DENIED, f"entry {entry_id} is not parented to {NODE_1}")
        for entry_id in (theirs.id, "no-such-entry")
    ]


async def test_eviction_forces_reattestation_under_the_same_node_name(ca: RunningCa) -> None:
    old = await attested_agent(ca)
    ca.agents.evict(old.spiffe_id, TESTER)
    again = await attested_agent(ca, "node-1")  # no --replace needed: the agent is gone
    assert again.spiffe_id == NODE_1
    assert list((await sign_nothing(ca, again)).svids) == []


async def test_ban_unban_and_evict_are_audited(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    ca.agents.ban(agent.spiffe_id, TESTER)
    ca.agents.unban(agent.spiffe_id, TESTER)
    ca.agents.evict(agent.spiffe_id, TESTER)
    with ca.database.transaction() as session:
        events = [
            r.event
            for r in AuditLogRepository(session).list()
            if r.event.action.startswith("agent.") and r.event.actor == TESTER
        ]
    assert [(e.actor, e.action, e.target) for e in events] == [
        (TESTER, "agent.ban", str(NODE_1)),
        (TESTER, "agent.unban", str(NODE_1)),
        (TESTER, "agent.evict", str(NODE_1)),
    ]


async def test_a_join_token_for_an_attested_node_name_is_refused_naming_evict(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    with pytest.raises(AlreadyExists) as raised:
        ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1")
    assert str(raised.value) == (
        f"agent {NODE_1} is attested (its SVID is valid until {agent.chain[0].not_valid_after_utc.isoformat()}); "
        f"one node name is one agent — evict it first with `trustmesh-ca agent evict {NODE_1}`, "
        "or generate the token with --replace so the new node replaces it when it attests"
    )


async def test_a_join_token_for_an_agent_whose_svid_expired_is_allowed(ca: RunningCa) -> None:
    await attested_agent(ca)
    ca.clock.advance(AGENT_TTL + timedelta(seconds=1))
    assert ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1").agent_id == NODE_1


async def test_a_trust_domain_mismatch_is_refused_and_leaves_the_join_token_unspent(ca: RunningCa) -> None:
    token = ca.join_tokens.generate(timedelta(hours=1), TESTER, node_name="node-1").token
    key = generate_private_key(KeyType.EC_P256)
    async with channel(ca, ca.attestation_port) as ch:
        request = node_pb2.AttestRequest(
            method="join_token", payload=token.encode(), csr=csr_for(key), trust_domain="prod.example"
        )
        error = await refused(node_pb2_grpc.NodeStub(ch).Attest(request, timeout=RPC_TIMEOUT))
    assert (error.code(), details(error)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the agent is configured for trust domain 'prod.example' but this CA serves 'example.org'; "
        "set trust_domain = 'example.org' in the agent's configuration (the join token was not used)",
    )
    assert (await attest(ca, token)).spiffe_id == str(NODE_1)


def last_seen(ca: RunningCa, agent: Agent) -> datetime | None:
    with ca.database.transaction() as session:
        return AgentRepository(session).get(agent.spiffe_id).last_seen_at


async def test_calls_answered_from_the_cache_record_the_agents_contact_once_an_interval(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    attested_at = last_seen(ca, agent)
    ca.clock.advance(timedelta(seconds=30))
    for _ in range(2):  # the second call is answered from the cache
        await sign_nothing(ca, agent)
    assert last_seen(ca, agent) == attested_at
    ca.clock.advance(timedelta(seconds=31))
    await sign_nothing(ca, agent)
    assert last_seen(ca, agent) == ca.clock.now()
