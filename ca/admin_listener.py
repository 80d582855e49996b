"""The HTTPS admin listener, composed from the configuration (``[admin_api]``, docs/admin-api.md).

:func:`ca.server.serve` binds ``admin_api.address`` with the other listeners (refused when in use),
:func:`prepare_https` builds who may call there and the TLS context, and :func:`serve_admin_https`
serves the same admin app as the local socket, with the remote authenticator instead of the
break-glass one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from ca.admin_auth import Authenticator, RemoteAuthenticator
from ca.admin_mtls import MtlsAdmins, PublishedTrust
from ca.admin_transport import (
    AdminTlsContext,
    CertificateSource,
    FileCertificate,
    ServingSvidCertificate,
    admin_protocol,
)
from ca.capped_listener import HANDSHAKE_TIMEOUT_SECONDS, CappedListener
from ca.config import AdminApiConfig
from ca.oidc import OidcParams, OidcVerifier, default_jwks_source
from ca.server_identity import ServingCredentials
from spiffe_core.clock import Clock
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

log = logging.getLogger(__name__)

# The listener's bounds: open connections per source address and in all (counted from accept, TLS
# handshake included: ca/capped_listener.py), request line plus headers, idle keep-alive seconds.
# HTTP/1.1 runs one request at a time per connection, so MAX_CONNECTIONS bounds requests in flight too.
MAX_CONNECTIONS_PER_SOURCE = 32
MAX_CONNECTIONS = 256
MAX_HEADER_BYTES = 16 * 1024
KEEP_ALIVE_SECONDS = 5
# How long a cancelled HTTP server may take to answer the requests it holds before it is cut off.
DRAIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class HttpsListener:
    """A bound HTTPS admin listener, ready to serve: its socket, who may call, its TLS context."""

    sock: socket.socket
    authenticator: Authenticator
    tls: AdminTlsContext


def prepare_https(
    config: AdminApiConfig,
    trust_domain: TrustDomain,
    sock: socket.socket,
    *,
    current: Callable[[], PublishedTrust],
    is_admin_entry: Callable[[SpiffeId], bool],
    serving: Callable[[], ServingCredentials],
    clock: Clock,
) -> HttpsListener:
    """Everything the listener on ``sock`` needs. A configured JWKS file or certificate that cannot be
    loaded stops the start here (ConfigError)."""
    authenticator = remote_authenticator(
        config, trust_domain, current=current, is_admin_entry=is_admin_entry, clock=clock
    )
    tls = AdminTlsContext(admin_certificate(config, serving), lambda: current().bundle)
    if config.tls_cert_file is not None:
        tls.refresh()
    return HttpsListener(sock, authenticator, tls)


def remote_authenticator(
    config: AdminApiConfig,
    trust_domain: TrustDomain,
    *,
    current: Callable[[], PublishedTrust],
    is_admin_entry: Callable[[SpiffeId], bool],
    clock: Clock,
) -> Authenticator:
    """Who may call over HTTPS: the IdP's bearer tokens (if configured) and mTLS admin SVIDs. Reads a
    configured JWKS file now, so a broken one stops the start (ConfigError)."""
    oidc = config.oidc
    verifier = None
    if oidc.enabled:
        params = OidcParams(oidc.issuer, oidc.audience, oidc.roles_claim, oidc.clock_skew, dict(oidc.role_map))
        verifier = OidcVerifier(params, default_jwks_source(oidc.jwks_file, oidc.jwks_url), clock)
    mtls = MtlsAdmins(
        trust_domain=trust_domain,
        current=current,
        admins={SpiffeId.parse(admin.spiffe_id): frozenset(admin.roles) for admin in config.admins},
        is_admin_entry=is_admin_entry,
        admin_entry_role=config.admin_entry_role,
        clock=clock,
    )
    return RemoteAuthenticator(verifier, mtls)


def admin_certificate(config: AdminApiConfig, serving: Callable[[], ServingCredentials]) -> CertificateSource:
    """The configured certificate files, or else the CA's own serving SVID (why: docs/admin-api.md)."""
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        return FileCertificate(config.tls_cert_file, config.tls_key_file)
    return ServingSvidCertificate(serving)


async def serve_admin_https(app: FastAPI, listener: HttpsListener, ready: Callable[[], Awaitable[None]]) -> None:
    """Serve ``app`` on the listener once ``ready`` returns (the serving SVID exists)."""
    await serve_https(
        app,
        listener.sock,
        listener.tls,
        ready,
        name="admin API",
        max_connections_per_source=MAX_CONNECTIONS_PER_SOURCE,
        max_connections=MAX_CONNECTIONS,
    )


async def serve_https(
    app: FastAPI,
    sock: socket.socket,
    tls: AdminTlsContext,
    ready: Callable[[], Awaitable[None]],
    *,
    name: str,
    max_connections_per_source: int,
    max_connections: int,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
) -> None:
    """Serve ``app`` over HTTPS on ``sock`` once ``ready`` returns, keeping its TLS context current while
    it serves, within this module's bounds: at most ``max_connections_per_source`` connections per
    source address and ``max_connections`` in all, each given ``handshake_timeout`` seconds for its TLS
    handshake (:class:`ca.capped_listener.CappedListener`, which takes ``sock`` over and closes it when
    done). The admin API and the agentless exchange are served this way.

    uvicorn's own ``limit_concurrency`` is not set: it counts only connections past their handshake and
    their requests (one at a time each), never more than the listener's total, so all it could add is
    503 answers on connections already accepted. The total, refused at accept, is the one bound."""
    await ready()
    tls.refresh()
    host, port = sock.getsockname()[:2]
    listening = CappedListener(
        sock,
        per_source=max_connections_per_source,
        total=max_connections,
        name=name,
        handshake_timeout=handshake_timeout,
    )
    log.info("%s listening over HTTPS on %s:%d", name, host, port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=admin_protocol(listening.connected),
            ssl_context_factory=lambda _config, _default: tls.context,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            server_header=False,
            log_config=None,
            lifespan="off",
        )
    )
    refresher = asyncio.create_task(tls.run())
    try:
        await serve_draining(server, [listening])
    finally:
        listening.close()
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher


async def serve_draining(server: uvicorn.Server, sockets: list[socket.socket] | None) -> None:
    """``server.serve(sockets)``, but when cancelled (another task of the CA failed: a port gRPC could
    not bind, a datastore gone) it first answers the requests it holds and stops, for at most
    :data:`DRAIN_SECONDS`. A request still running when the CA's event loop closes is cancelled there,
    and uvicorn logs that as a traceback ("Exception in ASGI application") after the CA's one error
    line."""
    serving = asyncio.ensure_future(server.serve(sockets=sockets))
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await asyncio.wait([serving], timeout=DRAIN_SECONDS)
        serving.cancel()
        raise
