"""The agent's health listener (``[health] address``): ``/live``, ``/ready`` and ``/metrics`` over plain
HTTP on a loopback TCP port or a 0600 Unix socket (docs/observability.md "Agent health").

Three fixed GET routes, so a small ASGI app served by uvicorn, without a web framework. The socket is
bound before the agent starts anything else (:func:`bind_health_socket`), so an address in use stops
the agent at once with one line naming ``health.address``; the server runs in the agent's TaskGroup and
stops with it. Bounded: at most :data:`MAX_CONNECTIONS` at once, idle keep-alives closed after 5 s.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sds.config import HealthConfig
from sds.health import AgentHealth
from sds.unix_sockets import refuse_live_socket, remove_stale_socket
from spiffe_core.errors import ConfigError

MAX_CONNECTIONS = 32
KEEP_ALIVE_SECONDS = 5

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def health_app(health: AgentHealth, registry: CollectorRegistry) -> App:
    """``GET /live`` (200 while the process answers), ``GET /ready`` (200, or 503 with the one-line
    reason), ``GET /metrics`` (Prometheus text format); anything else 404 or 405."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path not in ("/live", "/ready", "/metrics"):
            await _reply(send, 404, b"not found; the agent serves /live, /ready and /metrics\n")
        elif method not in ("GET", "HEAD"):
            await _reply(send, 405, f"{method} is not allowed; use GET\n".encode())
        elif path == "/live":
            await _reply(send, 200, b"ok\n")
        elif path == "/ready":
            reason = health.not_ready_reason()
            if reason is None:
                await _reply(send, 200, b"ready\n")
            else:
                await _reply(send, 503, f"not ready: {reason}\n".encode())
        else:
            await _reply(send, 200, generate_latest(registry), CONTENT_TYPE_LATEST)

    return app


async def _reply(send: Send, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bind_health_socket(config: HealthConfig) -> socket.socket | None:
    """Bind and listen on ``config.address`` (None when the listener is off). A Unix socket is created
    0600 (only the agent's user, and root, may ask); a stale one is replaced, a live one refused.
    Raises ConfigError naming ``health.address`` when it cannot be bound."""
    path = config.unix_path
    if path is not None:
        refuse_live_socket(path)
        remove_stale_socket(path, "the agent's health socket")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with _umask(0o177):
            _bind(sock, str(path), config.address)
    elif config.tcp_host is not None:
        host, port = config.tcp_host.strip("[]"), int(config.address.rpartition(":")[2])
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as err:
            raise ConfigError(f"health.address {config.address}: cannot resolve {host!r} ({err.strerror})") from err
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _bind(sock, sockaddr, config.address)
    else:
        return None
    sock.listen(MAX_CONNECTIONS)
    sock.setblocking(False)
    return sock


def _bind(sock: socket.socket, where: str | tuple[Any, ...], address: str) -> None:
    try:
        sock.bind(where)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"health.address {address} is in use; stop what listens there or choose another address"
            ) from err
        raise ConfigError(f"health.address {address} cannot be bound ({err.strerror}); fix health.address") from err


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the agent's (:mod:`sds.server`) stop everything at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_health(sock: socket.socket, app: App) -> None:
    """Serve ``app`` on the bound ``sock`` until cancelled; the socket is closed (and a Unix socket's
    file removed) when it ends."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    path = sock.getsockname() if sock.family == socket.AF_UNIX else None
    try:
        await _Server(config).serve(sockets=[sock])
    finally:
        sock.close()
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
