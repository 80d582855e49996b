"""TLS to the CA, authenticated by SPIFFE ID (DESIGN §1 "gRPC over mTLS"; X509-SVID.md §5).

The agent must accept exactly one peer as its CA: an X509-SVID for ``spiffe://<td>/trustmesh/server``
that chains to the agent's current bundle — as SPIRE agents accept only ``spiffe://<td>/spire/server``.
A DNS name proves nothing here: any SVID of the trust domain may carry the CA's name (an entry with that
``--dns``, a wildcard), and a server holding one could feed the agent a root of its own.

grpcio's Python API has no peer-verification callback and gRPC core checks only DNS/IP SANs against the
target name, so the agent terminates TLS itself. A :class:`CaTlsBridge` listens on a Unix socket in a
private 0700 directory; the node client's ``grpc.aio`` channel dials that socket without TLS. For every
connection gRPC opens, the bridge

1. refuses callers other than this process (``SO_PEERCRED``), so no one else can borrow the agent's
   client certificate;
2. opens TLS to the CA's address with Python's ``ssl``, presenting the agent's X509-SVID chain exactly
   as it holds it on the node API listener and no certificate on the attestation one;
3. verifies the chain the server sent as an X509-SVID against the bundle
   (:func:`~spiffe_core.x509_svid.verify_x509_svid`, the rules every SVID in trustmesh is checked
   with) and that its SPIFFE ID is exactly the server ID; the handshake itself proved the server holds
   the leaf's key;
4. only then copies bytes both ways. A peer that fails 2 or 3 is disconnected before a single gRPC byte
   reaches it or comes from it; the bridge keeps the reason (:attr:`CaTlsBridge.last_failure`) so the
   node client reports a :class:`CaNotTrusted` instead of gRPC's "connection closed".

OpenSSL itself is not given the bundle: with roots in its store it appends them to a client chain that
has no intermediates ("auto chain"), and a gRPC server reports a client's chain without its leaf
(``x509_pem_cert_chain``), so the CA would see a root where it expects the agent's SVID. Python's ``ssl``
shows the server's chain only privately before 3.13 (:func:`spiffe_core.peers.peer_certificate_chain`);
where neither form exists every server is refused rather than half-checked. The copy of the agent's key that ``ssl``
needs as a file lives in the private directory only while the TLS context loads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from spiffe_core.bundle import Bundle
from spiffe_core.errors import NotAuthenticated, TrustmeshError, UpstreamUnavailable, X509SvidError
from spiffe_core.peers import peer_certificate_chain, read_peer_credentials
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import X509Svid, verify_x509_svid

log = logging.getLogger(__name__)

# The CA's reserved serving identity; the same path as ca/reserved_ids.py (ca and sds never import
# each other: the ID is part of the protocol, like the node API's messages).
SERVER_PATH_SEGMENTS = ("trustmesh", "server")
_CHUNK = 64 * 1024
_SOCKET_NAME = "ca.sock"


def ca_server_id(trust_domain: TrustDomain) -> SpiffeId:
    """The only SPIFFE ID the agent accepts from its CA: ``spiffe://<td>/trustmesh/server``."""
    return SpiffeId.from_segments(trust_domain, *SERVER_PATH_SEGMENTS)


class CaNotTrusted(NotAuthenticated):
    """The server at the CA's address did not prove to be the CA: its certificate does not chain to the
    agent's bundle, or it is not an X509-SVID for ``spiffe://<td>/trustmesh/server``."""


def tls_context(svid: X509Svid | None, scratch_dir: Path) -> ssl.SSLContext:
    """A client context presenting ``svid`` (None: no client certificate) that leaves the server's
    chain to :func:`check_ca_peer` (see the module docstring). ``scratch_dir`` must be private: the key
    is written there for ``ssl`` to load (0600 from the first byte) and removed at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # verified after the handshake, before any byte is sent
    context.set_alpn_protocols(["h2"])
    if svid is not None:
        path = scratch_dir / f"svid-{os.urandom(8).hex()}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(svid.key_pem() + svid.chain_pem())
            context.load_cert_chain(path)
        finally:
            path.unlink(missing_ok=True)
    return context


def _peer_chain(ssl_object: ssl.SSLObject) -> tuple[x509.Certificate, ...]:
    """The chain the server sent, leaf first; X509SvidError when there is none or it cannot be read."""
    chain = peer_certificate_chain(ssl_object)
    if not chain:
        raise X509SvidError("the server sent no certificate")
    return chain


def check_ca_peer(
    chain: tuple[x509.Certificate, ...], bundle: Bundle, expected: SpiffeId, address: str, now: datetime
) -> None:
    """Raise :class:`CaNotTrusted` unless ``chain`` (leaf first, as the server sent it) is an X509-SVID
    for ``expected`` that chains to ``bundle`` at ``now``."""
    try:
        presented, _ = verify_x509_svid(chain, bundle, now)
    except X509SvidError as err:
        raise CaNotTrusted(
            f"the CA at {address} presented a certificate that is not a valid X509-SVID of "
            f"{expected.trust_domain} ({err}); only {expected} chained to the agent's bundle is accepted as the "
            "CA — check server_address and attestation_address, and trust_bundle_path on first contact"
        ) from err
    if presented != expected:
        raise CaNotTrusted(
            f"the CA at {address} presented SPIFFE ID {presented}, not {expected}; the agent talks only to "
            "its CA — another server answers on that address (check server_address and attestation_address)"
        )


class CaTlsBridge:
    """A Unix socket for an insecure ``grpc.aio`` channel whose connections reach ``address`` over TLS
    with a verified CA (see the module docstring). :meth:`open` first, :meth:`close` when done."""

    def __init__(
        self,
        address: str,
        *,
        trust_domain: TrustDomain,
        bundle: Bundle,
        svid: X509Svid | None,
        server_name: str,
        connect_timeout: float,
    ) -> None:
        host, _, port = address.rpartition(":")
        self._address = address
        self._host = host.strip("[]")
        self._port = int(port)
        self._bundle = bundle
        self._svid = svid
        self._expected = ca_server_id(trust_domain)
        self._server_name = server_name  # sent as SNI only
        self._timeout = connect_timeout
        self._dir: Path | None = None
        self._listener: socket.socket | None = None
        self._context: ssl.SSLContext | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.last_failure: TrustmeshError | None = None

    @property
    def target(self) -> str:
        """The gRPC target to dial (``unix:<path>``)."""
        if self._dir is None:
            raise RuntimeError("CaTlsBridge.open() was not called")
        return f"unix:{self._dir / _SOCKET_NAME}"

    def open(self) -> str:
        """Make the private directory and socket and start accepting; returns :attr:`target`. Needs a
        running event loop. Connections made before the accept task runs wait in the backlog."""
        self._dir = Path(tempfile.mkdtemp(prefix="trustmesh-ca-"))  # 0700
        try:
            self._context = tls_context(self._svid, self._dir)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(self._dir / _SOCKET_NAME))
            listener.listen(64)
            listener.setblocking(False)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._listener = listener
        self._accepting = asyncio.get_running_loop().create_task(self._accept())
        return self.target

    async def close(self) -> None:
        """Stop accepting, cut every bridged connection, remove the socket and its directory."""
        tasks = [t for t in (self._accepting, *self._connections) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _accept(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            task = loop.create_task(self._bridge(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _bridge(self, conn: socket.socket) -> None:
        writers: list[asyncio.StreamWriter] = []
        try:
            if read_peer_credentials(conn).pid != os.getpid():
                log.warning("refused a connection to the CA bridge %s from another process", self.target)
                return
            conn.setblocking(False)
            local_reader, local_writer = await asyncio.open_unix_connection(sock=conn)
            writers.append(local_writer)
            ca = await self._connect()
            if ca is None:
                return
            ca_reader, ca_writer = ca
            writers.append(ca_writer)
            self.last_failure = None
            pumps = (
                asyncio.create_task(_pump(local_reader, ca_writer)),
                asyncio.create_task(_pump(ca_reader, local_writer)),
            )
            try:  # a TLS stream cannot half-close: the end of either direction ends the connection
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for pump in done:
                    pump.result()
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError as err:  # one side went away (reset, TLS alert)
            log.debug("bridged connection to the CA at %s ended: %s", self._address, err)
        finally:
            if not writers:
                conn.close()
            for writer in writers:
                writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """TLS to the CA, verified; None (with :attr:`last_failure` set) when it cannot be had."""
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._context, server_hostname=self._server_name
                )
        except (OSError, TimeoutError) as err:
            self.last_failure = UpstreamUnavailable(f"TLS connection failed: {err or type(err).__name__}")
            return None
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            check_ca_peer(_peer_chain(ssl_object), self._bundle, self._expected, self._address, datetime.now(UTC))
        except (CaNotTrusted, X509SvidError, ValueError) as err:
            writer.transport.abort()  # not even a TLS close_notify is owed to an impostor
            self.last_failure = (
                err
                if isinstance(err, CaNotTrusted)
                else CaNotTrusted(f"the CA at {self._address} presented an unreadable certificate: {err}")
            )
            return None
        return reader, writer


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until end of stream; ``drain`` bounds what sits in memory."""
    while data := await source.read(_CHUNK):
        sink.write(data)
        await sink.drain()
