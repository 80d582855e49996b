"""The agent's client of the CA's node API (wire/node.proto; DESIGN §1 "gRPC over mTLS", §4).

``Attest`` goes to the attestation listener over server-authenticated TLS (the agent has no SVID yet);
everything else goes to the node API listener over mTLS, where the agent presents its own X509-SVID.
Either way the CA is authenticated by SPIFFE ID: only an X509-SVID for ``spiffe://<td>/trustmesh/server``
that chains to the agent's bundle is accepted, never a DNS name. gRPC cannot check that, so TLS is the
agent's own (:mod:`sds.ca_channel`) and gRPC runs over it through a private Unix socket; a peer that is
not the CA is disconnected before any gRPC byte passes and reported as :class:`~sds.ca_channel.CaNotTrusted`.

The channel is built from :class:`AgentCredentials` (the agent's SVID and bundle). When they change —
a renewed agent SVID, a rotated bundle — :meth:`NodeClient.use_credentials` swaps in a new channel:
new calls use it, unary calls in flight on the old one keep it until their own deadline, and an open
``Sync`` stream on the old one ends cleanly so its consumer reconnects with the new credentials. A
unary call the agent cuts off anyway (closing the client) fails as :class:`UpstreamUnavailable`, never
as a cancellation of its caller: the agent renews its SVID every few minutes, and a call slower than
that swap must be a failure its caller retries, not the silent end of the task that made it.

Wire messages become plain values here (:class:`SyncState`, :class:`EntryRecord`); gRPC status codes
become the error kinds of :mod:`spiffe_core.errors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.legacy_roots import check_legacy_roots
from sds.ca_channel import CaNotTrusted, CaTlsBridge
from sds.version import user_agent
from spiffe_core.bundle import Bundle
from spiffe_core.errors import (
    AlreadyExists,
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    ResourceExhausted,
    TrustmeshError,
    UpstreamUnavailable,
    X509SvidError,
)
from spiffe_core.keepalive import AGENT_KEEPALIVE, Keepalive
from spiffe_core.keys import PrivateKey
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import X509Svid, validate_signing_cert
from wire import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_RPC_TIMEOUT = 10.0
_Reply = TypeVar("_Reply")
# How long past its own deadline a unary call in flight on a replaced channel may take before the
# channel is closed under it (the deadline normally ends it first, with an error the caller retries).
_RETIRE_MARGIN_SECONDS = 1.0

_ERROR_KINDS: Mapping[grpc.StatusCode, type[TrustmeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: NotAuthenticated,
    grpc.StatusCode.PERMISSION_DENIED: NotAuthorized,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: UpstreamUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: UpstreamUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}
# Trailing metadata of a RESOURCE_EXHAUSTED answer: milliseconds until the CA would take the call.
RETRY_AFTER_KEY = "retry-after-ms"


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """A registration entry parented to this agent, as the CA sent it. TTLs of None mean "the CA's default"."""

    id: str
    spiffe_id: SpiffeId
    parent_id: SpiffeId
    selectors: frozenset[Selector]
    dns_names: tuple[str, ...] = ()
    x509_svid_ttl: timedelta | None = None
    jwt_svid_ttl: timedelta | None = None
    federates_with: frozenset[TrustDomain] = frozenset()
    admin: bool = False
    hint: str = ""
    revision: int = 0


@dataclass(frozen=True, slots=True)
class SyncState:
    """Everything the CA says this agent must hold, as of one ``SyncUpdate``."""

    version: int
    bundle: Bundle
    federated_bundles: Mapping[TrustDomain, Bundle] = field(default_factory=dict)
    entries: tuple[EntryRecord, ...] = ()
    tainted_authority_ids: frozenset[str] = frozenset()
    revoked_serials: frozenset[int] = frozenset()
    crls: tuple[bytes, ...] = ()
    # Enterprise roots for proxies, name -> canonical PEM (served over SDS as legacy/<name>).
    legacy_roots: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AttestResult:
    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    bundle: Bundle


@dataclass(frozen=True, slots=True)
class SignedX509Svid:
    """One item of a batch: the chain (leaf first), or why the CA refused this item (``error``)."""

    entry_id: str
    cert_chain: tuple[x509.Certificate, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class AgentCredentials:
    """What the mTLS channel is built from: the agent's X509-SVID and the bundle to verify the CA with."""

    svid: X509Svid
    bundle: Bundle


def make_csr(key: PrivateKey) -> bytes:
    """A PKCS#10 CSR (DER) for ``key``. The CA takes only its public key; the subject stays empty."""
    digest = hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384 else None
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, digest or hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _decode_chain(ders: Sequence[bytes], what: str) -> tuple[x509.Certificate, ...]:
    if not ders:
        raise InvalidArgument(f"the CA answered {what} without a certificate chain")
    try:
        return tuple(x509.load_der_x509_certificate(der) for der in ders)
    except ValueError as err:
        raise InvalidArgument(f"the CA answered {what} with an unreadable certificate: {err}") from err


def _ttl(seconds: int) -> timedelta | None:
    return None if seconds <= 0 else timedelta(seconds=seconds)


def decode_entry(message: node_pb2.RegistrationEntry) -> EntryRecord:
    """A wire entry as a value; raises InvalidArgument (SpiffeIdError …) for a malformed one."""
    return EntryRecord(
        id=message.id,
        spiffe_id=SpiffeId.parse(message.spiffe_id),
        parent_id=SpiffeId.parse(message.parent_id),
        selectors=frozenset(Selector.parse(s) for s in message.selectors),
        dns_names=tuple(message.dns_names),
        x509_svid_ttl=_ttl(message.x509_svid_ttl_seconds),
        jwt_svid_ttl=_ttl(message.jwt_svid_ttl_seconds),
        federates_with=frozenset(TrustDomain.parse(td) for td in message.federates_with),
        admin=message.admin,
        hint=message.hint,
        revision=message.revision,
    )


def _serial(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise InvalidArgument(f"revoked serial {text!r} is not hexadecimal") from None


def decode_sync_update(trust_domain: TrustDomain, message: node_pb2.SyncUpdate) -> SyncState:
    """A ``SyncUpdate`` as a :class:`SyncState`; raises InvalidArgument (BundleError, SpiffeIdError …)
    when any part of it is malformed — half an update is never applied."""
    federated: dict[TrustDomain, Bundle] = {}
    for name, document in message.federated_bundles.items():
        td = TrustDomain.parse(name)
        if td == trust_domain:
            raise InvalidArgument(
                f"federated bundle for {td} is the agent's own trust domain; bundles are never merged"
            )
        federated[td] = Bundle.parse_jwks(td, document)
    return SyncState(
        version=message.version,
        bundle=Bundle.parse_jwks(trust_domain, message.bundle),
        federated_bundles=federated,
        entries=tuple(decode_entry(entry) for entry in message.entries),
        tainted_authority_ids=frozenset(message.tainted_authority_ids),
        revoked_serials=frozenset(_serial(s) for s in message.revoked_serials),
        crls=tuple(message.crls),
        legacy_roots=check_legacy_roots(message.legacy_roots),
    )


def _retry_after(err: grpc.aio.AioRpcError) -> float:
    """The CA's retry hint in seconds (0.0 when it gave none or an unreadable one)."""
    # A grpc.aio.Metadata at run time, iterating as (key, value); the stubs type it as grpc's tuples.
    metadata: Iterable[tuple[str, str | bytes]] = cast(Any, err.trailing_metadata()) or ()
    for key, value in metadata:
        if key == RETRY_AFTER_KEY:
            try:
                return max(int(value), 0) / 1000
            except ValueError:
                return 0.0
    return 0.0


def check_roots_trust_domain(roots: Bundle, trust_domain: TrustDomain) -> None:
    """Refuse (ConfigError) roots that name another trust domain in their URI SAN (trustmesh's own roots
    do; an enterprise root usually names none and passes): the agent is pointed at another trust
    domain's CA. Checked before a join token is sent, so the token stays unspent."""
    for cert in roots.x509_authorities:
        try:
            named = validate_signing_cert(cert)
        except X509SvidError:
            continue  # not ours to judge here; the TLS handshake decides whether it verifies the CA
        if named is not None and named != trust_domain:
            raise ConfigError(
                f"trust_domain: the agent is configured for {trust_domain.name!r} but the CA's root certificate "
                f"{cert.subject.rfc4514_string()!r} is of trust domain {named.name!r}; set trust_domain = "
                f"{named.name!r}, or point trust_bundle_path and attestation_address at the CA of "
                f"{trust_domain.name!r} (the join token was not sent)"
            )


def rpc_error(
    err: grpc.aio.AioRpcError, rpc: str, address: str, transport_failure: TrustmeshError | None = None
) -> TrustmeshError:
    """The error kind for a failed call, with the CA's message (which names the fix) kept. When the
    call failed for want of a connection, ``transport_failure`` (what the TLS bridge saw) says why: a
    :class:`CaNotTrusted` is raised as it is."""
    code = err.code()
    kind = _ERROR_KINDS.get(code, TrustmeshError)
    details = err.details() or code.name
    if kind is UpstreamUnavailable and transport_failure is not None:
        if isinstance(transport_failure, CaNotTrusted):
            return transport_failure
        details = str(transport_failure)
    if kind is UpstreamUnavailable:
        return kind(f"node API {rpc} at {address} is unavailable ({details}); is the CA running and reachable?")
    if kind is ResourceExhausted:
        return ResourceExhausted(f"node API {rpc} at {address} refused: {details}", _retry_after(err))
    return kind(f"node API {rpc} at {address} refused: {details}")


@dataclass(eq=False)
class _Channel:
    """One mTLS channel and the Sync streams open on it (ended when the channel is replaced)."""

    channel: grpc.aio.Channel
    credentials: AgentCredentials
    bridge: CaTlsBridge
    streams: set[Any] = field(default_factory=set)
    retired: bool = False


def _cut_off(channel: _Channel) -> bool:
    """Whether a call on ``channel`` that raised CancelledError was cancelled by the client retiring the
    channel, not by a cancellation of the task that waits for it."""
    task = asyncio.current_task()
    return channel.retired and task is not None and not task.cancelling()


# The gRPC channel's reconnect backoff, initial and maximum (milliseconds).
CHANNEL_RECONNECT_BACKOFF_MS = (250, 2000)


class NodeClient:
    """The Node service, as the agent calls it. One instance per agent; safe to share between tasks."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        server_address: str,
        attestation_address: str,
        server_name: str,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        keepalive: Keepalive = AGENT_KEEPALIVE,
    ) -> None:
        self._trust_domain = trust_domain
        self._server_address = server_address
        self._attestation_address = attestation_address
        self._server_name = server_name
        self._options = [
            ("grpc.default_authority", server_name),
            # Names the agent and its version to the CA (its inventory shows them per agent).
            ("grpc.primary_user_agent", user_agent()),
            # The manager backs off between attempts itself; the channel's own reconnect backoff (1 s
            # doubling to 120 s by default) would stack on it and leave the agent away from a CA that
            # is back for minutes.
            ("grpc.initial_reconnect_backoff_ms", CHANNEL_RECONNECT_BACKOFF_MS[0]),
            ("grpc.min_reconnect_backoff_ms", CHANNEL_RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", CHANNEL_RECONNECT_BACKOFF_MS[1]),
            # A silent partition ends the Sync stream (and the agent reconnects) instead of leaving it
            # waiting for changes that cannot come (spiffe_core.keepalive).
            *keepalive.channel_options(),
        ]
        self._timeout = rpc_timeout
        self._credentials: AgentCredentials | None = None
        self._generation = 0
        self._current: _Channel | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def channel_generation(self) -> int:
        """How many times :meth:`use_credentials` replaced the credentials: a Sync stream that ended while
        this changed was ended by the client, not by the CA."""
        return self._generation

    def use_credentials(self, credentials: AgentCredentials) -> None:
        """Call the node API with this SVID and bundle from now on (see the module docstring)."""
        self._generation += 1
        self._credentials = credentials
        old, self._current = self._current, None
        if old is not None:
            self._retire(old)

    def _retire(self, old: _Channel) -> None:
        old.retired = True
        for call in tuple(old.streams):
            call.cancel()
        grace = self._timeout + _RETIRE_MARGIN_SECONDS
        task = asyncio.get_running_loop().create_task(self._close(old, grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(channel: _Channel, grace: float | None) -> None:
        try:
            await channel.channel.close(grace)
        finally:
            await channel.bridge.close()

    def _bridge(self, address: str, bundle: Bundle, svid: X509Svid | None) -> CaTlsBridge:
        bridge = CaTlsBridge(
            address,
            trust_domain=self._trust_domain,
            bundle=bundle,
            svid=svid,
            server_name=self._server_name,
            connect_timeout=self._timeout,
        )
        bridge.open()
        return bridge

    def _channel(self) -> _Channel:
        if self._current is None:
            credentials = self._credentials
            if credentials is None:
                raise FailedPrecondition("the agent has no X509-SVID yet; attest before calling the node API")
            bridge = self._bridge(self._server_address, credentials.bundle, credentials.svid)
            self._current = _Channel(
                grpc.aio.insecure_channel(bridge.target, options=self._options), credentials, bridge
            )
        return self._current

    def _error(self, err: grpc.aio.AioRpcError, rpc: str, channel: _Channel) -> TrustmeshError:
        return rpc_error(err, rpc, self._server_address, channel.bridge.last_failure)

    async def challenge(self, roots: Bundle, method: str, payload: bytes) -> bytes:
        """Step 1 of a challenge-response method (``method`` "x509pop": ``payload`` is the enterprise
        certificate chain): the challenge the CA wants answered in :meth:`attest`'s payload. The CA is
        verified against ``roots``, and another trust domain's CA is refused as in :meth:`attest`."""
        check_roots_trust_domain(roots, self._trust_domain)
        request = node_pb2.AttestChallengeRequest(method=method, payload=payload, trust_domain=self._trust_domain.name)
        response: node_pb2.AttestChallengeResponse = await self._attestation_call(
            "AttestChallenge", roots, lambda stub: stub.AttestChallenge(request, timeout=self._timeout)
        )
        return response.challenge

    async def attest(self, roots: Bundle, method: str, payload: bytes, csr: bytes) -> AttestResult:
        """Prove the node's identity (``method`` "join_token": ``payload`` is the token; "x509pop": the
        answer to :meth:`challenge`) and get the agent's first X509-SVID for the key behind ``csr``.
        The CA is verified against ``roots``.

        A CA of another trust domain is refused before the payload leaves: here when ``roots`` name it
        (ConfigError), else by the CA, which checks the trust domain sent along before the payload."""
        check_roots_trust_domain(roots, self._trust_domain)
        request = node_pb2.AttestRequest(method=method, payload=payload, csr=csr, trust_domain=self._trust_domain.name)
        response: node_pb2.AttestResponse = await self._attestation_call(
            "Attest", roots, lambda stub: stub.Attest(request, timeout=self._timeout)
        )
        try:
            spiffe_id = SpiffeId.parse(response.spiffe_id)
        except InvalidArgument as err:
            raise InvalidArgument(f"the CA answered Attest with a malformed agent ID: {err}") from err
        return AttestResult(
            spiffe_id,
            _decode_chain(response.svid_chain, "Attest"),
            Bundle.parse_jwks(self._trust_domain, response.bundle),
        )

    async def _attestation_call(
        self, rpc: str, roots: Bundle, call: Callable[[node_pb2_grpc.NodeStub], Awaitable[_Reply]]
    ) -> _Reply:
        """One unary call (named ``rpc`` in errors) of the attestation listener: server TLS only, the
        CA verified by ``roots``."""
        bridge = self._bridge(self._attestation_address, roots, None)
        try:
            async with grpc.aio.insecure_channel(bridge.target, options=self._options) as channel:
                try:
                    return await call(node_pb2_grpc.NodeStub(channel))
                except grpc.aio.AioRpcError as err:
                    raise rpc_error(err, rpc, self._attestation_address, bridge.last_failure) from err
        finally:
            await bridge.close()

    async def _unary(self, rpc: str, call: Callable[[node_pb2_grpc.NodeStub], Awaitable[_Reply]]) -> _Reply:
        """One unary call (named ``rpc`` in errors) of the node API over the current mTLS channel."""
        channel = self._channel()
        try:
            return await call(node_pb2_grpc.NodeStub(channel.channel))
        except grpc.aio.AioRpcError as err:
            raise self._error(err, rpc, channel) from err
        except asyncio.CancelledError:
            if not _cut_off(channel):
                raise
            raise UpstreamUnavailable(
                f"node API {rpc} at {self._server_address} was cut off: the agent closed its channel"
            ) from None

    async def renew(self, csr: bytes) -> tuple[x509.Certificate, ...]:
        """A new agent X509-SVID chain for the key behind ``csr``, authenticated by the current SVID."""
        request = node_pb2.RenewAgentRequest(csr=csr)
        response: node_pb2.RenewAgentResponse = await self._unary(
            "RenewAgent", lambda stub: stub.RenewAgent(request, timeout=self._timeout)
        )
        return _decode_chain(response.svid_chain, "RenewAgent")

    async def sync(self) -> AsyncIterator[SyncState]:
        """The full state at once, then again on every change. Ends without error when the channel is
        replaced (:meth:`use_credentials`) or the CA closes the stream: the caller reconnects. Raises
        the error kind of a failed stream (UpstreamUnavailable when the CA is gone)."""
        channel = self._channel()
        call = node_pb2_grpc.NodeStub(channel.channel).Sync(node_pb2.SyncRequest())
        channel.streams.add(call)
        try:
            while True:
                try:
                    update = await call.read()
                except asyncio.CancelledError:
                    if _cut_off(channel):
                        return  # cancelled by use_credentials, not by our caller
                    raise
                except grpc.aio.AioRpcError as err:
                    if channel.retired:
                        return
                    raise self._error(err, "Sync", channel) from err
                if update is grpc.aio.EOF:  # type: ignore[attr-defined]  # grpc-stubs lack EOF
                    return
                yield decode_sync_update(self._trust_domain, update)
        finally:
            channel.streams.discard(call)
            call.cancel()

    async def sign_x509_svids(self, items: Sequence[tuple[str, bytes]]) -> list[SignedX509Svid]:
        """Sign ``(entry_id, csr_der)`` items in one call; results come back per item, in order."""
        request = node_pb2.SignX509SvidsRequest(
            requests=[node_pb2.X509SvidRequest(entry_id=entry_id, csr=csr) for entry_id, csr in items]
        )
        response: node_pb2.SignX509SvidsResponse = await self._unary(
            "SignX509Svids", lambda stub: stub.SignX509Svids(request, timeout=self._timeout)
        )
        if [svid.entry_id for svid in response.svids] != [entry_id for entry_id, _ in items]:
            raise InvalidArgument("the CA answered SignX509Svids with results that do not match the requests")
        return [
            SignedX509Svid(svid.entry_id, error=svid.error)
            if svid.error
            else SignedX509Svid(svid.entry_id, _decode_chain(svid.cert_chain, "SignX509Svids"))
            for svid in response.svids
        ]

    async def mint_jwt_svid(self, entry_id: str, audience: Sequence[str]) -> tuple[str, datetime]:
        """A JWT-SVID for the entry, and when it expires."""
        request = node_pb2.MintJwtSvidRequest(entry_id=entry_id, audience=list(audience))
        response: node_pb2.MintJwtSvidResponse = await self._unary(
            "MintJwtSvid", lambda stub: stub.MintJwtSvid(request, timeout=self._timeout)
        )
        return response.token, datetime.fromtimestamp(response.expires_at, UTC)

    async def refresh_federated_bundle(self, trust_domain: TrustDomain, key_id: str) -> Bundle | None:
        """The CA's bundle of the federated ``trust_domain`` once it tried to get one holding the JWT
        key ``key_id`` (the CA may fetch the partner for it); None when the CA holds none yet."""
        request = node_pb2.RefreshFederatedBundleRequest(trust_domain=trust_domain.name, key_id=key_id)
        response: node_pb2.RefreshFederatedBundleResponse = await self._unary(
            "RefreshFederatedBundle", lambda stub: stub.RefreshFederatedBundle(request, timeout=self._timeout)
        )
        return Bundle.parse_jwks(trust_domain, response.bundle) if response.bundle else None

    async def close(self) -> None:
        """Close every channel; calls in flight are cancelled."""
        current, self._current = self._current, None
        if current is not None:
            current.retired = True
            await self._close(current, None)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
