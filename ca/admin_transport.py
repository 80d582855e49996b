"""The admin API's connections: what uvicorn does not tell the app, and the HTTPS listener's TLS.

uvicorn hands an ASGI app neither the TLS client's certificate chain nor a Unix socket peer's
credentials. :func:`admin_protocol` makes an h11 protocol class that reads both from the transport
once per connection, right after the TLS handshake, and adds them to every request's scope: the chain
as the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``, PEM, leaf first, as
the client sent it) and the peer's pid/uid/gid as ``scope["extensions"]["trustmesh.peer_credentials"]``.
The TCP listeners' per-source connection caps are counted before that, at accept
(:mod:`ca.capped_listener`); the protocol tells the listener when a connection's handshake is done.

:class:`AdminTlsContext` is the HTTPS listener's ``ssl.SSLContext``: it serves the CA's own serving
SVID (following its renewals) or a configured certificate (following changes of its files), and asks
clients for a certificate without requiring one (``CERT_OPTIONAL``: bearer-token clients send none).
OpenSSL must know the roots a client SVID chains to, so every root the bundle publishes is added to
the context's store as it appears; a store can only grow, so the admin check
(:mod:`ca.admin_mtls`) verifies the chain again against the *current* bundle. Changes are picked up
by :meth:`AdminTlsContext.run` within a second and apply to new handshakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from uvicorn.protocols.http.h11_impl import H11Protocol

from ca.admin_guard import PEER_CREDENTIALS_EXTENSION
from ca.server_identity import ServingCredentials
from spiffe_core.backoff import LogThrottle
from spiffe_core.bundle import Bundle
from spiffe_core.errors import ConfigError, X509SvidError
from spiffe_core.peers import peer_certificate_chain, read_peer_credentials

log = logging.getLogger(__name__)

TLS_REFRESH_SECONDS = 1.0
_throttle = LogThrottle()


def connection_extensions(transport: asyncio.BaseTransport) -> dict[str, Any]:
    """The scope extensions for every request on this connection (module docstring)."""
    extensions: dict[str, Any] = {}
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        extensions[PEER_CREDENTIALS_EXTENSION] = read_peer_credentials(sock)
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        try:
            chain = peer_certificate_chain(ssl_object)
        except X509SvidError as err:  # an old Python: mTLS admins cannot work, bearer tokens still do
            if _throttle.should_log(time.monotonic()):
                log.warning("cannot read TLS client certificates: %s", err)
            chain = ()
        extensions["tls"] = {
            "server_cert": None,
            "client_cert_chain": [c.public_bytes(serialization.Encoding.PEM).decode() for c in chain],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }
    return extensions


class _WithExtensions:
    """The app, with this connection's extensions added to each request's scope."""

    def __init__(self, app: Any, extensions: dict[str, Any]) -> None:
        self._app = app
        self._extensions = extensions

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), **self._extensions}
        await self._app(scope, receive, send)


def admin_protocol(on_connected: Callable[[asyncio.BaseTransport], None] | None = None) -> type[H11Protocol]:
    """An h11 protocol class adding the connection's extensions to every request; ``on_connected`` is
    called with each transport as it is handed over, i.e. once its TLS handshake is done
    (:meth:`ca.capped_listener.CappedListener.connected`)."""

    class AdminProtocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if on_connected is not None:
                on_connected(transport)
            super().connection_made(transport)
            self.app = _WithExtensions(self.app, connection_extensions(transport))

    return AdminProtocol


class CertificateSource(Protocol):
    """The HTTPS listener's certificate and key."""

    def version(self) -> object:
        """Anything that compares unequal once the certificate changed."""
        ...

    def load_into(self, context: ssl.SSLContext) -> None: ...


class ServingSvidCertificate:
    """The CA's own serving SVID (:class:`ca.server_identity.ServerIdentity`). ``ssl`` loads keys only
    from files: the key is written to a private directory for the moment it takes to load, 0600 from
    the first byte, and removed at once."""

    def __init__(self, current: Callable[[], ServingCredentials]) -> None:
        self._current = current

    def version(self) -> object:
        return self._current()

    def load_into(self, context: ssl.SSLContext) -> None:
        credentials = self._current()
        scratch = Path(tempfile.mkdtemp(prefix="trustmesh-admin-tls-"))  # 0700
        try:
            path = scratch / "serving.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(credentials.private_key_pem + credentials.cert_chain_pem)
            context.load_cert_chain(path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


class FileCertificate:
    """A configured certificate chain and key (``admin_api.tls_cert_file``/``tls_key_file``), loaded
    again whenever either file changes (a certificate manager renewing them in place)."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self._cert_file = cert_file
        self._key_file = key_file

    def version(self) -> object:
        stamps = []
        for path in (self._cert_file, self._key_file):
            with contextlib.suppress(OSError):
                stat = path.stat()
                stamps.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
        return tuple(stamps)

    def load_into(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self._cert_file, self._key_file)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"admin_api.tls_cert_file {self._cert_file} and tls_key_file {self._key_file} cannot be "
                f"loaded ({err}); give a PEM certificate chain and its unencrypted PEM key"
            ) from err


class AdminTlsContext:
    """The HTTPS listener's server context (module docstring). :meth:`refresh` once before serving.
    Without a ``bundle`` no client certificate is asked for (the agentless exchange's listener)."""

    def __init__(self, certificate: CertificateSource, bundle: Callable[[], Bundle] | None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_NONE if bundle is None else ssl.CERT_OPTIONAL
        context.set_alpn_protocols(["http/1.1"])
        self.context = context
        self._certificate = certificate
        self._bundle = bundle
        self._loaded: object = None
        self._roots: set[bytes] = set()

    def refresh(self) -> None:
        """Load the certificate again if it changed, and add the bundle's new roots to the store."""
        version = self._certificate.version()
        if version != self._loaded:
            self._certificate.load_into(self.context)
            self._loaded = version
        for root in () if self._bundle is None else self._bundle().x509_authorities:
            der = root.public_bytes(serialization.Encoding.DER)
            if der not in self._roots:
                self.context.load_verify_locations(cadata=der)
                self._roots.add(der)

    async def run(self) -> None:
        """Keep the context current until cancelled; a failed refresh is logged (throttled) and the
        context keeps what it had."""
        while True:
            await asyncio.sleep(TLS_REFRESH_SECONDS)
            try:
                self.refresh()
            except (ConfigError, OSError, ssl.SSLError) as err:
                if _throttle.should_log(time.monotonic()):
                    log.warning("cannot refresh the admin API's TLS certificate: %s%s", err, _throttle.note())
