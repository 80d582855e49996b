"""The agent's client of the CA's node API (wire/node.proto; DESIGN §1 "gRPC over mTLS", §4).

``Attest`` goes to the attestation listener over server-authenticated TLS (the agent has no SVID yet);
everything else goes to the node API listener over mTLS, where the agent presents its own X509-SVID.
Either way the CA's serving certificate is checked against the X.509 authorities of the agent's
bundle, with the configured ``server_name`` as the TLS target name (the CA's serving X509-SVID carries
it as a DNS SAN).

The channel is built from :class:`AgentCredentials` (the agent's SVID and bundle). When they change —
a renewed agent SVID, a rotated bundle — :meth:`NodeClient.use_credentials` swaps in a new channel:
new calls use it, unary calls in flight on the old one get a grace period, and an open ``Sync`` stream
on the old one ends cleanly so its consumer reconnects with the new credentials.

Wire messages become plain values here (:class:`SyncState`, :class:`EntryRecord`); gRPC status codes
become the error kinds of :mod:`spiffe_core.errors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from spiffe_core.bundle import Bundle
from spiffe_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    TrustmeshError,
    UpstreamUnavailable,
)
from spiffe_core.keys import PrivateKey
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import X509Svid
from wire import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_RPC_TIMEOUT = 10.0
# How long unary calls in flight on a replaced channel may take before it is closed under them.
_RETIRE_GRACE_SECONDS = 5.0

_ERROR_KINDS: Mapping[grpc.StatusCode, type[TrustmeshError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: NotAuthenticated,
    grpc.StatusCode.PERMISSION_DENIED: NotAuthorized,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: UpstreamUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: UpstreamUnavailable,
}


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
    )


# What grpc's connection error says when the TLS handshake, not the network, failed.
_HANDSHAKE_FAILURES = ("handshake failed", "verification check failed", "certificate_verify_failed")


def _handshake_problem(details: str) -> str | None:
    """The reason a handshake failed, in a few words, or None when ``details`` is no handshake failure."""
    lowered = details.lower()
    if not any(marker in lowered for marker in _HANDSHAKE_FAILURES):
        return None
    if "hostname verification" in lowered:
        return "the CA's certificate does not carry the expected server name"
    _, found, reason = details.partition("CERTIFICATE_VERIFY_FAILED: ")
    if found:
        return f"the CA's certificate does not verify: {reason.split(':')[0].strip()}"
    return details


def rpc_error(err: grpc.aio.AioRpcError, rpc: str, address: str, trust: str | None = None) -> TrustmeshError:
    """The error kind for a failed call, with the CA's message (which names the fix) kept. A failed TLS
    handshake is NotAuthenticated and names what the CA was checked against (``trust``: the bundle and
    server name), since a CA that answers with a certificate we do not trust is not a CA that is down."""
    code = err.code()
    kind = _ERROR_KINDS.get(code, TrustmeshError)
    details = err.details() or code.name
    problem = _handshake_problem(details) if code is grpc.StatusCode.UNAVAILABLE else None
    if problem is not None:
        checked = f" (checked against {trust})" if trust else ""
        return NotAuthenticated(
            f"node API {rpc} at {address}: TLS handshake failed, {problem}{checked}; the agent's trust bundle "
            "and server_name must match the CA's ('trustmesh-ca bundle show', server.server_name)"
        )
    if kind is UpstreamUnavailable:
        return kind(f"node API {rpc} at {address} is unavailable ({details}); is the CA running and reachable?")
    return kind(f"node API {rpc} at {address} refused: {details}")


def _authority_label(cert: x509.Certificate) -> str:
    """An X.509 authority as trustmesh names it (its subject key ID, hex), else its subject."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return cert.subject.rfc4514_string()


@dataclass(eq=False)
class _Channel:
    """One mTLS channel and the Sync streams open on it (ended when the channel is replaced)."""

    channel: grpc.aio.Channel
    credentials: AgentCredentials
    streams: set[Any] = field(default_factory=set)
    retired: bool = False


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
    ) -> None:
        self._trust_domain = trust_domain
        self._server_address = server_address
        self._attestation_address = attestation_address
        self._server_name = server_name
        self._options = [
            ("grpc.ssl_target_name_override", server_name),
            # The manager backs off between attempts itself; the channel's own reconnect backoff (1 s
            # doubling to 120 s by default) would stack on it and leave the agent away from a CA that
            # is back for minutes.
            ("grpc.initial_reconnect_backoff_ms", CHANNEL_RECONNECT_BACKOFF_MS[0]),
            ("grpc.min_reconnect_backoff_ms", CHANNEL_RECONNECT_BACKOFF_MS[0]),
            ("grpc.max_reconnect_backoff_ms", CHANNEL_RECONNECT_BACKOFF_MS[1]),
        ]
        self._timeout = rpc_timeout
        self._credentials: AgentCredentials | None = None
        self._current: _Channel | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def use_credentials(self, credentials: AgentCredentials) -> None:
        """Call the node API with this SVID and bundle from now on (see the module docstring)."""
        self._credentials = credentials
        old, self._current = self._current, None
        if old is not None:
            self._retire(old)

    def _retire(self, old: _Channel) -> None:
        old.retired = True
        for call in tuple(old.streams):
            call.cancel()
        task = asyncio.get_running_loop().create_task(old.channel.close(_RETIRE_GRACE_SECONDS))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _channel(self) -> _Channel:
        if self._current is None:
            credentials = self._credentials
            if credentials is None:
                raise FailedPrecondition("the agent has no X509-SVID yet; attest before calling the node API")
            svid = credentials.svid
            tls = grpc.ssl_channel_credentials(
                root_certificates=credentials.bundle.x509_authorities_pem(),
                private_key=svid.key_pem(),
                certificate_chain=svid.chain_pem(),
            )
            self._current = _Channel(
                grpc.aio.secure_channel(self._server_address, tls, options=self._options), credentials
            )
        return self._current

    def _trust(self, bundle: Bundle | None = None) -> str:
        """What the CA's certificate is checked against, for error messages: the bundle and the name."""
        if bundle is None:
            bundle = None if self._credentials is None else self._credentials.bundle
        if bundle is None:
            return f"server name {self._server_name!r}"
        ids = ", ".join(_authority_label(cert) for cert in bundle.x509_authorities) or "none"
        return (
            f"the {bundle.trust_domain} bundle at sequence {bundle.sequence}, X.509 authorities {ids}, and "
            f"server name {self._server_name!r}"
        )

    async def attest(self, roots: Bundle, method: str, payload: bytes, csr: bytes) -> AttestResult:
        """Prove the node's identity (``method`` "join_token": ``payload`` is the token) and get the
        agent's first X509-SVID for the key behind ``csr``. The CA is verified against ``roots``."""
        tls = grpc.ssl_channel_credentials(root_certificates=roots.x509_authorities_pem())
        request = node_pb2.AttestRequest(method=method, payload=payload, csr=csr)
        async with grpc.aio.secure_channel(self._attestation_address, tls, options=self._options) as channel:
            try:
                response = await node_pb2_grpc.NodeStub(channel).Attest(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as err:
                raise rpc_error(err, "Attest", self._attestation_address, self._trust(roots)) from err
        try:
            spiffe_id = SpiffeId.parse(response.spiffe_id)
        except InvalidArgument as err:
            raise InvalidArgument(f"the CA answered Attest with a malformed agent ID: {err}") from err
        return AttestResult(
            spiffe_id,
            _decode_chain(response.svid_chain, "Attest"),
            Bundle.parse_jwks(self._trust_domain, response.bundle),
        )

    async def renew(self, csr: bytes) -> tuple[x509.Certificate, ...]:
        """A new agent X509-SVID chain for the key behind ``csr``, authenticated by the current SVID."""
        stub = node_pb2_grpc.NodeStub(self._channel().channel)
        try:
            response = await stub.RenewAgent(node_pb2.RenewAgentRequest(csr=csr), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise rpc_error(err, "RenewAgent", self._server_address, self._trust()) from err
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
                    task = asyncio.current_task()
                    if channel.retired and task is not None and not task.cancelling():
                        return  # cancelled by use_credentials, not by our caller
                    raise
                except grpc.aio.AioRpcError as err:
                    if channel.retired:
                        return
                    raise rpc_error(err, "Sync", self._server_address, self._trust()) from err
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
        stub = node_pb2_grpc.NodeStub(self._channel().channel)
        try:
            response = await stub.SignX509Svids(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise rpc_error(err, "SignX509Svids", self._server_address, self._trust()) from err
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
        stub = node_pb2_grpc.NodeStub(self._channel().channel)
        try:
            response = await stub.MintJwtSvid(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise rpc_error(err, "MintJwtSvid", self._server_address, self._trust()) from err
        return response.token, datetime.fromtimestamp(response.expires_at, UTC)

    async def close(self) -> None:
        """Close every channel; calls in flight are cancelled."""
        current, self._current = self._current, None
        if current is not None:
            current.retired = True
            await current.channel.close(None)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
