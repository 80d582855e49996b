"""The node API's gRPC edge (wire/node.proto; DESIGN §1 "gRPC over mTLS", §3 "Node attestation").

Two TLS listeners on one ``grpc.aio`` server, because grpcio cannot *request* a client certificate
without *requiring* one:

* the attestation listener: server TLS only. Only ``Attest`` and ``AttestChallenge`` work there; every
  other RPC finds no client certificate and is refused UNAUTHENTICATED.
* the node API listener: mTLS, client certificates required and verified against the trust bundle's
  X.509 authorities, then checked again as X509-SVIDs of an known, unbanned agent.

Both serve the CA's own X509-SVID (:mod:`ca.server_identity`) and pick up a renewed serving SVID or a
changed bundle on the next handshake (``grpc.dynamic_ssl_server_credentials``), without a restart.

The servicer is thin: authenticate, apply the node API's limits (:mod:`ca.ratelimit`: batch size,
signing rate per agent — every X509-SVID, agent renewal and JWT-SVID counts, so no agent can make the
CA write issuance and audit records faster than that — attestation rate per source address, federated
bundle refreshes per agent), call one :class:`~ca.node_service.NodeService` method in a worker thread
(or, for ``RefreshFederatedBundle``, :class:`~ca.federation.unknown_keys.UnknownKeyRefresh`), encode.
Domain errors become status codes through ``spiffe_core.errors.transport_status``; anything else is
logged and answered INTERNAL with a generic message. A refusal for a rate limit (RESOURCE_EXHAUSTED)
also carries its wait as trailing metadata, :data:`RETRY_AFTER_KEY` (milliseconds).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.federation.unknown_keys import UnknownKeyRefresh
from ca.listening import why_unbindable
from ca.metrics import CaMetrics, reason_label
from ca.node_service import AuthenticatedAgent, NodeService, SyncState
from ca.ratelimit import NodeApiGuard
from ca.server_identity import ServerIdentity
from ca.store.records import RegistrationEntry
from ca.sync import ChangeHub, UpdateVersions, watch
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import (
    ConfigError,
    FailedPrecondition,
    NotAuthenticated,
    ResourceExhausted,
    TrustmeshError,
    X509SvidError,
    transport_status,
)
from spiffe_core.keepalive import server_options as keepalive_server_options
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import load_pem_certificates
from wire import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)

_INTERNAL = "internal error; see the CA's log"
# How long a stopping server lets in-flight unary calls finish (streams are cut).
STOP_GRACE_SECONDS = 2.0
# Trailing metadata of a RESOURCE_EXHAUSTED answer: milliseconds until the call would pass.
RETRY_AFTER_KEY = "retry-after-ms"
# The agent names itself first in gRPC's user-agent header (sds.node_client): trustmesh-agent/<version>.
_AGENT_USER_AGENT = re.compile(r"(?:^|\s)trustmesh-agent/([0-9A-Za-z.+_-]{1,64})(?:\s|$)")


Context = grpc.aio.ServicerContext[Any, Any]
Request = TypeVar("Request")
Reply = TypeVar("Reply")
Handler = Callable[["NodeServicer", Request, Context], Awaitable[Reply]]


def _end_with_status(context: Context, err: Exception) -> None:
    """Set the call's status for an error: its kind's code from the one table, or INTERNAL (logged).

    The handler then returns instead of calling ``context.abort``: abort's exception would keep the
    handler's frame, and the request with it, in a reference cycle until the garbage collector ran
    (docs/performance.md), so a caller's refused batch of CSRs would outlive its call."""
    status = transport_status(err)
    if status is None:
        log.error("node API call failed", exc_info=err)
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details(_INTERNAL)
        return
    if isinstance(err, ResourceExhausted):
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(max(1, round(err.retry_after * 1000)))),))
    context.set_code(grpc.StatusCode[status[1]])
    context.set_details(str(err))


def _edge(handler: Handler[Request, Reply]) -> Handler[Request, Reply | None]:
    """Turn an error a handler raises into the RPC's status (the one table at the edge)."""

    @functools.wraps(handler)
    async def answer(servicer: NodeServicer, request: Request, context: Context) -> Reply | None:
        try:
            return await handler(servicer, request, context)
        except Exception as err:  # every error becomes a status; unknown ones INTERNAL
            _end_with_status(context, err)
            return None

    return answer


def _peer_chain_pem(context: Context) -> bytes | None:
    """The client's certificate chain (PEM, leaf first), if any.

    grpc reports the leaf as ``x509_pem_cert`` and, as ``x509_pem_cert_chain``, the chain OpenSSL
    built, which need not start with the leaf (with an intermediate, it starts with the intermediate).
    So the leaf comes first, then whatever else the chain holds; verification decides the rest."""
    auth = context.auth_context()
    leaves = list(auth.get("x509_pem_cert", ()))
    if not leaves:
        return None
    leaf: bytes = leaves[0]
    chain = b"".join(auth.get("x509_pem_cert_chain", ()))
    return _leaf_first(leaf, chain) if chain else leaf


@functools.lru_cache(maxsize=1024)
def _leaf_first(leaf: bytes, chain: bytes) -> bytes:
    """``leaf`` then the certificates of ``chain`` other than it (PEM). A pure function of what the
    handshake presented, so an agent's every call on its connection reuses one answer."""
    try:
        leaf_der = x509.load_pem_x509_certificate(leaf).public_bytes(serialization.Encoding.DER)
        others = [c for c in load_pem_certificates(chain) if c.public_bytes(serialization.Encoding.DER) != leaf_der]
    except (ValueError, X509SvidError):
        return leaf  # authentication then judges the leaf alone
    return b"".join([leaf, *(c.public_bytes(serialization.Encoding.PEM) for c in others)])


def peer_source(peer: str) -> str:
    """The address a call came from, without its port: ``ipv4:10.0.0.1:5000`` → ``10.0.0.1``,
    ``ipv6:%5B::1%5D:5000`` (grpc percent-encodes the brackets) → ``::1``; anything else (a Unix
    socket) as it is."""
    kind, _, address = peer.partition(":")
    address = urllib.parse.unquote(address)
    if kind == "ipv4":
        return address.rpartition(":")[0] or address
    if kind == "ipv6" and address.startswith("["):
        return address[1:].partition("]")[0] or address
    return peer


def reported_version(metadata: Any) -> str:
    """The version an agent reports in its user-agent header (``trustmesh-agent/0.4.0 grpc-python/…``),
    or "" when it reports none: an older agent, or a caller that is not our agent. Only a short token of
    safe characters is taken, so a caller cannot put arbitrary text into the inventory."""
    for key, value in metadata or ():
        if key == "user-agent" and isinstance(value, str):
            found = _AGENT_USER_AGENT.search(value)
            return "" if found is None else found[1]
    return ""


def _der_chain(chain: tuple[x509.Certificate, ...]) -> list[bytes]:
    return [cert.public_bytes(serialization.Encoding.DER) for cert in chain]


def _bundle_json(bundle: Bundle) -> bytes:
    return bundle.to_json().encode()


def _ttl_seconds(entry_ttl: timedelta | None) -> int:
    """0 on the wire means "the CA's default TTL" (the entry names none)."""
    return 0 if entry_ttl is None else int(entry_ttl.total_seconds())


def encode_entry(entry: RegistrationEntry) -> node_pb2.RegistrationEntry:
    spec = entry.spec
    return node_pb2.RegistrationEntry(
        id=entry.id,
        spiffe_id=str(spec.spiffe_id),
        parent_id=str(spec.parent_id),
        selectors=sorted(str(s) for s in spec.selectors),
        dns_names=list(spec.dns_names),
        x509_svid_ttl_seconds=_ttl_seconds(spec.x509_ttl),
        jwt_svid_ttl_seconds=_ttl_seconds(spec.jwt_ttl),
        federates_with=sorted(td.name for td in spec.federates_with),
        admin=spec.admin,
        hint=spec.hint,
        revision=entry.revision,
    )


def encode_sync_update(state: SyncState, version: int) -> node_pb2.SyncUpdate:
    return node_pb2.SyncUpdate(
        version=version,
        bundle=_bundle_json(state.bundle),
        entries=[encode_entry(entry) for entry in state.entries],
        tainted_authority_ids=list(state.tainted_authority_ids),
        revoked_serials=sorted(format(serial, "x") for serial in state.revoked_serials),
        crls=list(state.crls),
        federated_bundles={td.name: _bundle_json(bundle) for td, bundle in state.federated_bundles.items()},
        legacy_roots=dict(state.legacy_roots),
    )


class NodeServicer:
    """``trustmesh.node.v1.Node``; register with :func:`add_to_server`."""

    def __init__(
        self,
        node: NodeService,
        hub: ChangeHub,
        versions: UpdateVersions,
        clock: Clock,
        guard: NodeApiGuard | None = None,
        *,
        unknown_keys: UnknownKeyRefresh | None = None,
        metrics: CaMetrics | None = None,
    ) -> None:
        self._node = node
        self._hub = hub
        self._versions = versions
        self._clock = clock
        self._guard = guard or NodeApiGuard()  # the default limits of ca.ratelimit.NodeApiLimits
        self._metrics = metrics or CaMetrics()
        self._unknown_keys = unknown_keys  # None: this CA fetches no partner bundle on request

    async def _agent(self, context: Context) -> AuthenticatedAgent:
        """The calling agent: at once when the node service holds all it needs to accept it (and its
        contact was recorded lately), else from a worker thread (chain verification, datastore reads and
        writes, audited refusals)."""
        chain = _peer_chain_pem(context)
        version = reported_version(context.invocation_metadata())
        held = self._node.authenticate_held(chain, version)
        if held is not None:
            return held
        return await asyncio.to_thread(self._node.authenticate, chain, peer_source(context.peer()), version)

    def _admit_signing(self, agent: AuthenticatedAgent, count: int, kind: str) -> None:
        """Pass ``count`` SVIDs of ``kind`` through the agent's signing rate; a refusal counts as that
        many issuance errors (a client over its rate is an issuance problem the operator should see)."""
        try:
            self._guard.admit_signing(agent.spiffe_id, count)
        except TrustmeshError as err:
            self._metrics.issuance_errors.labels(kind, reason_label(err)).inc(count)
            raise

    async def _admit_attestation(self, method: str, context: Context) -> str:
        """The caller's source address, once its attestation rate admits another step (checked before
        any evidence is looked at or spent); a refusal is audited."""
        source = peer_source(context.peer())
        try:
            self._guard.admit_attestation(source)
        except ResourceExhausted as err:
            await asyncio.to_thread(self._node.refuse_attestation, source, method, err)
            raise
        return source

    @_edge
    async def Attest(  # gRPC method names are CamelCase
        self, request: node_pb2.AttestRequest, context: Context
    ) -> node_pb2.AttestResponse:
        source = await self._admit_attestation(request.method, context)
        svid = await asyncio.to_thread(
            functools.partial(
                self._node.attest,
                request.method,
                request.payload,
                request.csr,
                source=source,
                trust_domain=request.trust_domain,
                version=reported_version(context.invocation_metadata()),
            )
        )
        return node_pb2.AttestResponse(
            spiffe_id=str(svid.spiffe_id), svid_chain=_der_chain(svid.cert_chain), bundle=_bundle_json(svid.bundle)
        )

    @_edge
    async def AttestChallenge(
        self, request: node_pb2.AttestChallengeRequest, context: Context
    ) -> node_pb2.AttestChallengeResponse:
        source = await self._admit_attestation(request.method, context)
        challenge = await asyncio.to_thread(
            functools.partial(
                self._node.challenge,
                request.method,
                request.payload,
                source=source,
                trust_domain=request.trust_domain,
            )
        )
        return node_pb2.AttestChallengeResponse(challenge=challenge)

    @_edge
    async def RenewAgent(self, request: node_pb2.RenewAgentRequest, context: Context) -> node_pb2.RenewAgentResponse:
        agent = await self._agent(context)
        self._admit_signing(agent, 1, "x509")
        version = reported_version(context.invocation_metadata())
        svid = await asyncio.to_thread(self._node.renew, agent.spiffe_id, request.csr, version)
        return node_pb2.RenewAgentResponse(svid_chain=_der_chain(svid.cert_chain))

    @_edge
    async def Sync(self, request: node_pb2.SyncRequest, context: Context) -> None:
        """Full state at once, then again on every change that alters it. The stream ends when the
        client SVID it was opened with expires (the agent reconnects with its renewed one), and at once
        when the agent is banned or evicted or that SVID is replaced by a re-attestation."""
        agent = await self._agent(context)
        remaining = (agent.not_after - self._clock.now()).total_seconds()
        with self._hub.subscribe(agent.spiffe_id) as subscription:
            load = functools.partial(self._node.get_sync_state, agent.spiffe_id, agent.serial)
            try:
                async with asyncio.timeout(remaining):
                    async for delivery in watch(subscription, load):
                        await context.write(encode_sync_update(delivery.state, self._versions.next()))
                        if delivery.changed_at is not None:
                            self._metrics.sync_push_seconds.observe(time.monotonic() - delivery.changed_at)
            except TimeoutError:
                raise NotAuthenticated(
                    f"the X509-SVID this stream was opened with expired at {agent.not_after.isoformat()}; "
                    "reconnect with the renewed SVID",
                ) from None

    @_edge
    async def SignX509Svids(
        self, request: node_pb2.SignX509SvidsRequest, context: Context
    ) -> node_pb2.SignX509SvidsResponse:
        agent = await self._agent(context)
        self._admit_signing(agent, len(request.requests), "x509")
        items = [(item.entry_id, item.csr) for item in request.requests]
        outcomes = self._node.sign_x509_svids_now(agent.spiffe_id, items)  # a lone rotation, at once
        if outcomes is None:
            outcomes = await asyncio.to_thread(self._node.sign_x509_svids, agent.spiffe_id, items)
        return node_pb2.SignX509SvidsResponse(
            svids=[
                node_pb2.SignedX509Svid(
                    entry_id=outcome.entry_id,
                    cert_chain=[] if outcome.svid is None else _der_chain(outcome.svid.cert_chain),
                    error=outcome.error,
                )
                for outcome in outcomes
            ]
        )

    @_edge
    async def MintJwtSvid(self, request: node_pb2.MintJwtSvidRequest, context: Context) -> node_pb2.MintJwtSvidResponse:
        agent = await self._agent(context)
        self._admit_signing(agent, 1, "jwt")
        token, expires_at = await asyncio.to_thread(
            self._node.mint_jwt_svid, agent.spiffe_id, request.entry_id, list(request.audience)
        )
        return node_pb2.MintJwtSvidResponse(token=token, expires_at=int(expires_at.timestamp()))

    @_edge
    async def RefreshFederatedBundle(
        self, request: node_pb2.RefreshFederatedBundleRequest, context: Context
    ) -> node_pb2.RefreshFederatedBundleResponse:
        agent = await self._agent(context)
        self._guard.admit_bundle_refresh(agent.spiffe_id)
        trust_domain = TrustDomain.parse(request.trust_domain)
        if self._unknown_keys is None:
            raise FailedPrecondition("this CA fetches no federated bundle on request")
        bundle = await self._unknown_keys.fetch_bundle_with_key(agent.spiffe_id, trust_domain, request.key_id)
        return node_pb2.RefreshFederatedBundleResponse(bundle=b"" if bundle is None else _bundle_json(bundle))


class TlsConfigurations:
    """The certificate-configuration fetcher of one listener: grpc calls it before every handshake;
    it answers a new configuration only when the serving SVID or the bundle changed (None otherwise)."""

    def __init__(self, identity: ServerIdentity, bundle: Callable[[], Bundle], verify_clients: bool) -> None:
        self._identity = identity
        self._bundle = bundle
        self._verify_clients = verify_clients
        self._last: tuple[object, bytes | None] | None = None

    def current(self) -> grpc.ServerCertificateConfiguration:
        credentials = self._identity.get_current()
        roots = self._bundle().x509_authorities_pem() if self._verify_clients else None
        self._last = (credentials, roots)
        return grpc.ssl_server_certificate_configuration(
            [(credentials.private_key_pem, credentials.cert_chain_pem)], root_certificates=roots
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        credentials = self._identity.get_current()
        roots = self._bundle().x509_authorities_pem() if self._verify_clients else None
        if self._last == (credentials, roots):
            return None
        return self.current()

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.current(),
            self,  # type: ignore[arg-type]  # grpc-stubs omit that the fetcher may answer None (no change)
            require_client_authentication=self._verify_clients,
        )


@dataclass(frozen=True, slots=True)
class NodeApiPorts:
    """The ports actually bound (they differ from the configured ones when those are 0)."""

    attestation: int
    node_api: int


def build_node_server(
    servicer: NodeServicer,
    identity: ServerIdentity,
    bundle: Callable[[], Bundle],
    *,
    attestation_address: str,
    node_api_address: str,
) -> tuple[grpc.aio.Server, NodeApiPorts]:
    """A gRPC server with both listeners bound (not started). Must be called on the serving loop."""
    # grpc sets SO_REUSEPORT by default: a second CA would bind the same ports and take half the agents.
    # Keepalive: agents' pings are accepted at their cadence, and a vanished agent's Sync stream ends.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *keepalive_server_options()])
    node_pb2_grpc.add_NodeServicer_to_server(servicer, server)
    attestation = _add_port(
        server,
        "server.attestation_address",
        attestation_address,
        TlsConfigurations(identity, bundle, verify_clients=False),
    )
    node_api = _add_port(
        server, "server.node_api_address", node_api_address, TlsConfigurations(identity, bundle, verify_clients=True)
    )
    return server, NodeApiPorts(attestation=attestation, node_api=node_api)


def _add_port(
    server: grpc.aio.Server,
    key: str,
    address: str,
    tls: TlsConfigurations,
) -> int:
    try:
        port = server.add_secure_port(address, tls.server_credentials())
    except RuntimeError as err:  # grpc says only "failed to bind"
        raise ConfigError(why_unbindable(address, key)) from err
    if port == 0:
        raise ConfigError(why_unbindable(address, key))
    return port


async def run_node_server(server: grpc.aio.Server) -> None:
    """Serve until cancelled, then stop, giving unary calls a moment to finish."""
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(STOP_GRACE_SECONDS)
