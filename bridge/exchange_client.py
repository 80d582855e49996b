"""The host's half of the agentless exchange (:mod:`bridge.exchange`): one HTTPS request to the CA's
exchange listener, sent only once the server proved to be the CA.

The server must present an X509-SVID for ``spiffe://<td>/trustmesh/server`` that chains to the bundle
the host was given. A DNS name would prove nothing: any workload of the trust domain may hold an SVID
carrying the CA's name. The remote ``trustmesh-ca`` CLI and the agent check the CA the same way
(``ca.admin_client``, ``sds.ca_channel``; ``bridge`` imports neither package). ``http.client``
connects, the chain is checked right after the handshake, and only then is the request written: a
server that fails the check receives nothing, not the enterprise certificate's signature, not the CSR.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from bridge.exchange import EXCHANGE_PATH, MAX_REPLY_BYTES, ExchangeReply, ExchangeRequest
from spiffe_core.bundle import Bundle
from spiffe_core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotAuthenticated,
    NotAuthorized,
    ResourceExhausted,
    TrustmeshError,
    UpstreamUnavailable,
    X509SvidError,
)
from spiffe_core.peers import peer_certificate_chain
from spiffe_core.spiffe_id import SpiffeId
from spiffe_core.x509_svid import verify_x509_svid

DEFAULT_TIMEOUT = 30.0
_REFUSALS: dict[int, type[TrustmeshError]] = {
    400: InvalidArgument,
    403: NotAuthorized,
    409: FailedPrecondition,
    413: InvalidArgument,
    429: ResourceExhausted,
    503: UpstreamUnavailable,
}


class ServerNotTrusted(NotAuthenticated):
    """The server did not prove to be the CA; nothing was sent to it."""


@dataclass(frozen=True, slots=True)
class ExchangeServer:
    """Where the CA's exchange listener is (``host:port``) and how to know it: the trust domain's bundle
    and the CA's SPIFFE ID."""

    address: str
    bundle: Bundle

    @property
    def spiffe_id(self) -> SpiffeId:
        """The CA's serving identity (``ca.reserved_ids.server_id``: part of the protocol)."""
        return SpiffeId.from_segments(self.bundle.trust_domain, "trustmesh", "server")

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"--server {self.address!r} is not HOST:PORT, e.g. ca.example.org:8444")
        return host.strip("[]"), int(port)


def check_server(chain: tuple[x509.Certificate, ...], server: ExchangeServer, now: datetime) -> None:
    """ServerNotTrusted unless ``chain`` (leaf first, as sent) is an X509-SVID for the CA's SPIFFE ID
    that chains to the bundle at ``now``."""
    expected = server.spiffe_id
    try:
        presented, _ = verify_x509_svid(chain, server.bundle, now)
    except X509SvidError as err:
        raise ServerNotTrusted(
            f"the server at {server.address} presented no valid X509-SVID of {expected.trust_domain} ({err}); nothing "
            "was sent to it — check --server and --bundle (the trust domain's current bundle)"
        ) from err
    if presented != expected:
        raise ServerNotTrusted(
            f"the server at {server.address} presented SPIFFE ID {presented}, not the CA's {expected}; nothing was "
            "sent to it — another server answers there (check --server, and --trust-domain)"
        )


class _CheckedConnection(http.client.HTTPSConnection):
    """An HTTPS connection whose server is checked (:func:`check_server`) before anything is written."""

    def __init__(self, server: ExchangeServer, timeout: float) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # checked as an X509-SVID right after the handshake
        host, port = server.host_port
        super().__init__(host, port, timeout=timeout, context=context)
        self._server = server

    def connect(self) -> None:
        super().connect()
        try:
            check_server(peer_certificate_chain(self.sock), self._server, datetime.now(UTC))
        except BaseException:
            self.sock.close()
            raise


def exchange(server: ExchangeServer, request: ExchangeRequest, timeout: float = DEFAULT_TIMEOUT) -> ExchangeReply:
    """Send ``request`` to the CA and return its reply. Raises ServerNotTrusted (nothing was sent),
    UpstreamUnavailable (unreachable), NotAuthorized with the CA's reason (expired, revoked, untrusted
    CA, chain too long, no mapping rule …), InvalidArgument and the other refusals by status."""
    connection = _CheckedConnection(server, timeout)
    try:
        connection.request("POST", EXCHANGE_PATH, request.encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read(MAX_REPLY_BYTES + 1)
    except (OSError, http.client.HTTPException) as err:  # ssl.SSLError and socket.timeout are OSErrors
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise UpstreamUnavailable(
            f"cannot reach the CA's exchange listener at {server.address} ({reason}); check --server and that "
            "the CA sets bridge.exchange_address"
        ) from err
    finally:
        connection.close()
    if len(body) > MAX_REPLY_BYTES:
        raise InvalidArgument(f"the CA's exchange reply is larger than {MAX_REPLY_BYTES} bytes")
    if response.status != 200:
        raise _refusal(response.status, body, server)
    return ExchangeReply.decode(body)


def _refusal(status: int, body: bytes, server: ExchangeServer) -> TrustmeshError:
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace").strip()[:200] or f"HTTP {status}"
    if status == 404:
        return FailedPrecondition(f"{server.address} serves no agentless exchange ({message}); check --server")
    kind = _REFUSALS.get(status, TrustmeshError)
    if kind is NotAuthorized:
        return NotAuthorized(f"the CA refused the exchange: {message}")
    return kind(message)
