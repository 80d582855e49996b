"""The SPIFFE bundle endpoint this CA serves to federated trust domains (SPIFFE_Federation.md §4, §5).

``GET /`` answers the trust domain's bundle as published (JSON with ``spiffe_sequence`` and
``spiffe_refresh_hint``); ``GET /?use=x509-svid`` answers only its X.509 authorities, for readers that
refuse a whole bundle with any other key (gRPC's SPIFFE bundle map, grpc proposal A87; Envoy's
``trust_bundle_map``). Nothing else is served and no client is authenticated: a bundle is public.

Profiles (§5.2): ``https_spiffe`` presents the CA's own X509-SVID (:mod:`ca.server_identity`), so the
TLS context follows its renewals — one of a new authority only once partners can verify it
(:class:`SpiffeServingContexts`); ``https_web`` presents a configured Web PKI certificate, re-read
when its files change. The TLS context is chosen per connection (``start_tls`` after accept), so a new
credential is used from the next handshake on without restarting the listener.

Requests are tiny and bounded: the request head may be at most :data:`MAX_REQUEST_HEAD` bytes and the
whole exchange must finish in :data:`REQUEST_TIMEOUT_SECONDS`; a connection carries one request. The
endpoint is open to anyone who can reach it, so connections are counted from accept, before the TLS
handshake, by :class:`ca.capped_listener.CappedListener`: at most :data:`MAX_CONNECTIONS_PER_SOURCE`
per source address and :data:`MAX_CONNECTIONS` in all, further ones closed at once. The listener's
handshake bound (:data:`ca.capped_listener.HANDSHAKE_TIMEOUT_SECONDS` from accept) and the request
timeout (from the handler's start, right after accept) both run during the handshake; the handler
reports the handshake done as soon as ``start_tls`` returns, and from then on the request timeout
alone bounds the connection. With both at 10 s a stalled handshake ends at 10 s either way; the
listener's bound is the one every HTTPS listener of the CA shares, and it ends the connection at
the socket even if the handler were slow to run.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from ca.capped_listener import HANDSHAKE_TIMEOUT_SECONDS, CappedListener
from ca.server_identity import ServerIdentity, ServingCredentials
from spiffe_core.bundle import USE_X509_SVID, Bundle
from spiffe_core.clock import Clock
from spiffe_core.tls import load_identity

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8 * 1024
REQUEST_TIMEOUT_SECONDS = 10.0
# Partners fetch once per refresh hint over one short connection; a few share an address behind NAT.
MAX_CONNECTIONS_PER_SOURCE = 8
# Below the admin and exchange listeners' 256: a trust domain has few partners, and the three
# listeners together stay well inside the 1024 descriptors a process is commonly allowed.
MAX_CONNECTIONS = 128
_X509_ONLY_QUERY = f"use={USE_X509_SVID}"


def _server_context(cert_chain_pem: bytes, private_key_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    load_identity(context, cert_chain_pem, private_key_pem)
    return context


class SpiffeServingContexts:
    """``https_spiffe``: a TLS context with the CA's serving SVID, rebuilt when that is renewed.

    Partners authenticate this endpoint with the bundle they fetched last (§5.2.2), so a serving SVID
    of an authority they do not hold yet would lock them out for good: they could never fetch the
    bundle that holds it. A renewed SVID is therefore presented only once its authority has been in the
    published bundle for ``hold`` (two refresh hints, the same lead a prepared authority gets before it
    signs). Until then — after ``authority rotate --now``, say — the SVID presented before stays, as
    long as it is valid and its authority is still in the bundle (a tainted authority is: partners
    trust it until they fetch the new bundle anyway). "In the bundle since" is when this endpoint first
    saw it there, which is never earlier than its publication: the hold errs on the long side."""

    def __init__(self, identity: ServerIdentity, bundle: Callable[[], Bundle], hold: timedelta, clock: Clock) -> None:
        self._identity = identity
        self._bundle = bundle
        self._hold = hold
        self._clock = clock
        self._seen_since: dict[str, datetime] = {}  # authority ID -> first seen in the published bundle
        self._presented: ServingCredentials | None = None
        self._cached: tuple[ServingCredentials, ssl.SSLContext] | None = None

    def __call__(self) -> ssl.SSLContext:
        now = self._clock.now()
        previous = self._presented
        # Authority IDs as the CA names them (ca.authority.authority_id_for): subject key identifiers.
        published = {
            x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()
            for cert in self._bundle().x509_authorities
        }
        # What is published at the first look was published before this endpoint started: held long enough.
        first_seen = now if previous is not None else now - self._hold
        self._seen_since = {i: self._seen_since.get(i, first_seen) for i in published}
        current = self._identity.get_current()
        presented = current
        if (
            previous is not None
            and previous is not current
            and not self._published_long_enough(current.authority_id, now)
            and previous.authority_id in published
            and now < previous.not_after
        ):
            presented = previous
        self._presented = presented
        cached = self._cached
        if cached is None or cached[0] is not presented:
            cached = self._cached = (
                presented,
                _server_context(presented.cert_chain_pem, presented.private_key_pem),
            )
        return cached[1]

    def _published_long_enough(self, authority_id: str, now: datetime) -> bool:
        since = self._seen_since.get(authority_id)
        return since is not None and now - since >= self._hold


class WebServingContexts:
    """``https_web``: a TLS context with the configured certificate and key, re-read when either file's
    modification time changes (a renewed Web PKI certificate is picked up without a restart)."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self._cert_file = cert_file
        self._key_file = key_file
        self._cached: tuple[tuple[int, int], ssl.SSLContext] | None = None

    def __call__(self) -> ssl.SSLContext:
        stamp = (self._cert_file.stat().st_mtime_ns, self._key_file.stat().st_mtime_ns)
        cached = self._cached
        if cached is None or cached[0] != stamp:
            context = _server_context(self._cert_file.read_bytes(), self._key_file.read_bytes())
            cached = self._cached = (stamp, context)
        return cached[1]


def bundle_document(bundle: Bundle, query: str) -> bytes:
    """What ``GET /?<query>`` answers: the whole bundle, or its X.509 authorities only (same sequence)."""
    if query == _X509_ONLY_QUERY:
        bundle = replace(bundle, jwt_authorities=())
    return bundle.to_json().encode()


class BundleEndpoint:
    """Serves ``bundle()`` on a listening socket with the TLS context ``tls()`` returns at each accept,
    within the module's connection bounds (the handshake bound can be shortened for tests)."""

    def __init__(
        self,
        bundle: Callable[[], Bundle],
        tls: Callable[[], ssl.SSLContext],
        *,
        max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE,
        max_connections: int = MAX_CONNECTIONS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
    ) -> None:
        self._bundle = bundle
        self._tls = tls
        self._per_source = max_connections_per_source
        self._total = max_connections
        self._handshake_timeout = handshake_timeout

    async def serve(self, sock: socket.socket) -> None:
        """Serve until cancelled. ``sock`` is taken over (detached) and closed when done."""
        listening = CappedListener(
            sock,
            per_source=self._per_source,
            total=self._total,
            name="bundle endpoint",
            handshake_timeout=self._handshake_timeout,
        )
        handle = functools.partial(self._handle, listening)
        try:
            server = await asyncio.start_server(handle, sock=listening, limit=MAX_REQUEST_HEAD)
            async with server:
                await server.serve_forever()
        finally:
            listening.close()

    async def _handle(
        self, listening: CappedListener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                await writer.start_tls(self._tls())
                listening.connected(writer.transport)
                head = await reader.readuntil(b"\r\n\r\n")
                status, body = self._answer(head)
                writer.write(_response(status, body))
                await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
            log.debug("bundle endpoint connection ended: %s", err or type(err).__name__)
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, bytes]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "400 Bad Request", b'{"error": "not an HTTP/1.x request"}'
        method, target, _ = parts
        path, _, query = target.partition("?")
        if path != "/":
            return "404 Not Found", b'{"error": "the bundle is served at /"}'
        if method != "GET":
            return "405 Method Not Allowed", b'{"error": "only GET is served"}'
        return "200 OK", bundle_document(self._bundle(), query)


def _response(status: str, body: bytes) -> bytes:
    headers = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return headers.encode() + body
