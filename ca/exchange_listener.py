"""The agentless exchange's HTTPS listener (``[bridge] exchange_address``, off by default; docs/bridge.md
"Agentless exchange"): one route, ``POST /v1/exchange``, over :class:`ca.bridge_exchange.LegacyExchange`.

It is a listener of its own, not a route of the admin API: its callers are legacy hosts, not admins,
so nothing of the admin API (its roles, its client-certificate store) is exposed to them, and the
listener can be opened to the hosts' networks alone. It serves the CA's own serving SVID, which the
host checks by SPIFFE ID (``spiffe://<td>/trustmesh/server``), and asks for no client certificate: the
host proves its enterprise certificate inside the request (:mod:`bridge.exchange` says why).

Bounds: at most :data:`MAX_CONNECTIONS_PER_SOURCE` connections per source address and
:data:`MAX_CONNECTIONS` in all (counted from accept, TLS handshake included, which must end within
:data:`ca.capped_listener.HANDSHAKE_TIMEOUT_SECONDS`), a request body of
at most :data:`bridge.exchange.MAX_REQUEST_BYTES`, and the admin listener's limits on headers and
idle connections (:func:`ca.admin_listener.serve_https`); the per-source exchange rate is the use
case's.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from bridge.exchange import EXCHANGE_PATH, MAX_REQUEST_BYTES, ExchangeReply
from ca.admin_listener import serve_https
from ca.admin_transport import AdminTlsContext, ServingSvidCertificate
from ca.http_api import error_reply
from ca.server_identity import ServingCredentials
from spiffe_core.errors import ResourceExhausted, TrustmeshError

MAX_CONNECTIONS_PER_SOURCE = 8
# Legacy hosts make one short exchange at a time; as many in all as the admin listener takes.
MAX_CONNECTIONS = 256


class ExchangeOps(Protocol):
    """:class:`ca.bridge_exchange.LegacyExchange`."""

    def exchange(self, body: bytes, source: str) -> ExchangeReply: ...


def _refused(err: TrustmeshError) -> Response:
    reply = error_reply(err)
    if isinstance(err, ResourceExhausted):
        reply.headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    return reply


def create_exchange_app(ops: ExchangeOps) -> FastAPI:
    """The listener's app: ``POST /v1/exchange`` with the request's JSON, answered with the reply's JSON
    or ``{"error": reason}`` and the status of the refusal (403 for a refused certificate)."""
    app = FastAPI(
        title="trustmesh agentless exchange",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        max_body_size=MAX_REQUEST_BYTES,
    )
    app.add_exception_handler(TrustmeshError, lambda _req, err: _refused(err))

    @app.exception_handler(HTTPException)
    def http_error(_req: Request, err: HTTPException) -> JSONResponse:  # 404, 405, 413 in the same shape
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.post(EXCHANGE_PATH)
    async def exchange(request: Request) -> Response:
        body = await request.body()
        source = request.client.host if request.client is not None else ""
        reply = await asyncio.to_thread(ops.exchange, body, source)  # reads files and the datastore, signs
        return Response(reply.encode(), media_type="application/json")

    return app


async def serve_exchange(
    ops: ExchangeOps,
    sock: socket.socket,
    serving: Callable[[], ServingCredentials],
    ready: Callable[[], Awaitable[None]],
) -> None:
    """Serve the exchange on ``sock`` (bound by ``ca.server``) once ``ready`` returns (the CA holds its
    serving SVID), following the serving SVID's renewals."""
    tls = AdminTlsContext(ServingSvidCertificate(serving), None)
    await serve_https(
        create_exchange_app(ops),
        sock,
        tls,
        ready,
        name="agentless exchange",
        max_connections_per_source=MAX_CONNECTIONS_PER_SOURCE,
        max_connections=MAX_CONNECTIONS,
    )
