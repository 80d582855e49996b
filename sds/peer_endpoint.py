"""A gRPC server on a public Unix socket whose servicers know each caller's kernel credentials.

SPIFFE_Workload_Endpoint.md §5 asks the endpoint to identify callers out of band; on a Unix socket
the kernel does it (``SO_PEERCRED``). Python's gRPC never shows the server its sockets, so the public
socket is served by a small asyncio proxy instead (see docs/workload-api.md):

1. it accepts a connection and reads the peer's pid/uid/gid (``SO_PEERCRED``) and a pidfd for that
   exact process (``SO_PEERPIDFD``, Linux ≥ 6.5; older kernels: ``pidfd_open`` on the pid, which
   leaves a small pid-reuse window between connect and accept);
2. it connects to the real ``grpc.aio`` server on a private socket inside a 0700 directory, from a
   client socket it first *binds to a path of its own*; gRPC reports that path as the call's peer
   (``context.peer() == "unix:<path>"``), which is the key under which the credentials are registered;
3. it passes bytes both ways, never parsing HTTP/2, and forgets the connection (registry entry,
   pidfd, bound path) when either side closes.

The bytes move at the transport level (:class:`_Half`): each chunk one side's transport reads is
handed to the other side's ``write`` in the same callback, with no stream reader, task or wake-up in
between, and a side whose write buffer fills pauses reading on the other. An established stream pays
two socket calls per chunk for the proxy, which keeps an SDS push to 1,000 streams close to what the
gRPC server alone costs (docs/performance.md).

Connections are budgeted per uid as well as in total: a uid holding ``max_connections_per_uid``
connections gets its new ones closed at once (logged at most once per 10 s per uid), so one local user
cannot take the slots every other user's workloads need.

A connection made straight to the private socket has no registry entry and is refused; the
directory's mode keeps other users from making one at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from sds.attestor import ProcessAttestor
from sds.unix_sockets import refuse_live_socket, remove_stale_socket
from spiffe_core.backoff import LogThrottle
from spiffe_core.errors import ConfigError, NotAuthorized
from spiffe_core.peers import PeerCredentials, read_peer_credentials
from spiffe_core.selectors import Selector

logger = logging.getLogger(__name__)

# Python 3.11's socket module does not name it; the value is fixed in the Linux UAPI (asm-generic/socket.h).
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_CLIENT_NAME = "c-" + "0" * 16  # shape of the proxy's bound client socket names (token_hex(8))
_BACKEND_NAME = "grpc.sock"
# Defaults of the connection budgets (the agent's limits.* settings) and of the largest request message.
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_UID = 256
MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's own default, made explicit
# Pending connections the kernel queues for the proxy: a burst from one user must not fill the queue
# before the proxy gets to close its connections (the kernel caps it at net.core.somaxconn).
_BACKLOG = 4096

Context = grpc.aio.ServicerContext[Any, Any]


def open_peer_pidfd(sock: socket.socket, pid: int) -> int:
    """A pidfd for the process that connected ``sock``. Raises ProcessLookupError when it is gone.

    ``SO_PEERPIDFD`` names the connecting process itself; the ``pidfd_open(pid)`` fallback for kernels
    older than 6.5 names whoever holds the pid now, which is the same process unless it exited and
    the pid was reused between connect and accept."""
    try:
        fd: int = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as err:
        if err.errno != errno.ENOPROTOOPT:
            raise
        return os.pidfd_open(pid)
    return fd


@dataclass(frozen=True, slots=True)
class _Peer:
    creds: PeerCredentials
    pidfd: int


class PeerAttestor:
    """Answers "who is this call from?" for servicers behind an :class:`AttestedEndpoint`."""

    def __init__(self, process_attestor: ProcessAttestor | None = None) -> None:
        self._process = process_attestor or ProcessAttestor()
        self._peers: dict[str, _Peer] = {}

    @property
    def connections(self) -> int:
        """Connections currently registered (open through the public socket)."""
        return len(self._peers)

    async def attest(self, context: Context) -> frozenset[Selector]:
        """The caller's selectors, read now. Raises :class:`NotAuthorized` for an unknown connection
        or a caller whose process has exited."""
        peer = self._peer(context.peer())
        # The connection may close (and its pidfd be closed, its number reused) while a worker thread
        # attests: the thread gets its own duplicate.
        pidfd = os.dup(peer.pidfd)
        try:
            return await self._process.attest_process(peer.creds, pidfd)
        finally:
            os.close(pidfd)

    def _peer(self, key: str) -> _Peer:
        peer = self._peers.get(key)
        if peer is None:
            raise NotAuthorized(
                f"connection {key!r} did not come through the agent's public socket, or has closed; "
                "connect to the Workload API socket the agent serves"
            )
        return peer

    def _register(self, key: str, peer: _Peer) -> None:
        self._peers[key] = peer

    def _forget(self, key: str) -> None:
        peer = self._peers.pop(key, None)
        if peer is not None:
            os.close(peer.pidfd)


class AttestedEndpoint:
    """A ``grpc.aio`` server reached through ``public_socket``; servicers attest callers with :attr:`attestor`.

    Register servicers with :meth:`add_servicer` before starting. Use :meth:`serve` in a TaskGroup
    (runs until cancelled), ``async with``, or :meth:`start`/:meth:`stop`. The public socket gets
    ``mode`` (default 0666, as SPIRE does: workloads of every user must reach it; attestation, not
    file permissions, decides what each one gets).

    At most ``max_connections`` connections are open at once, at most ``max_connections_per_uid`` of
    them from one uid; a connection over either budget is closed as soon as it is accepted. Requests
    larger than ``max_receive_message_bytes`` are refused by gRPC (RESOURCE_EXHAUSTED)."""

    def __init__(
        self,
        public_socket: Path,
        *,
        mode: int = 0o666,
        process_attestor: ProcessAttestor | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_uid: int = MAX_CONNECTIONS_PER_UID,
        max_receive_message_bytes: int = MAX_RECEIVE_MESSAGE_BYTES,
    ) -> None:
        self._public = public_socket
        self._mode = mode
        self._max_connections = max_connections
        self._max_per_uid = max_connections_per_uid
        self._max_receive = max_receive_message_bytes
        self._per_uid: dict[int, int] = {}  # open connections by uid; a uid leaves when it has none
        self._refusals = LogThrottle()
        self._private_dir = public_socket.with_name(f".{public_socket.name}.d")
        self._registrations: list[Callable[[grpc.aio.Server], None]] = []
        self.attestor = PeerAttestor(process_attestor)
        self.ready = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._proxy: asyncio.Server | None = None
        self._owns_private_dir = False
        self._connections: set[_Connection] = set()

    @property
    def public_socket(self) -> Path:
        return self._public

    @property
    def _backend(self) -> Path:
        return self._private_dir / _BACKEND_NAME

    def add_servicer(self, register: Callable[[grpc.aio.Server], None]) -> None:
        """``register(server)`` adds a servicer (``add_XServicer_to_server``) when the server starts."""
        self._registrations.append(register)

    async def serve(self) -> None:
        """Serve until cancelled, then close every connection and remove both sockets."""
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    async def __aenter__(self) -> AttestedEndpoint:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the private gRPC server, then the public proxy. Raises :class:`ConfigError` when a
        socket path is too long or a file that is not ours stands where a socket must go."""
        self._check_paths()
        self._public.parent.mkdir(parents=True, exist_ok=True)
        refuse_live_socket(self._public)
        self._make_private_dir()
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", self._max_receive)]
        )
        for register in self._registrations:
            register(server)
        server.add_insecure_port(f"unix:{self._backend}")
        await server.start()
        self._server = server
        try:
            remove_stale_socket(self._public, "the Workload API socket")
            self._proxy = await asyncio.get_running_loop().create_unix_server(
                self._accept, path=str(self._public), backlog=_BACKLOG
            )
            os.chmod(self._public, self._mode)
        except BaseException:
            await self.stop()
            raise
        self.ready.set()

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, close every proxied connection, stop the gRPC server, remove the sockets."""
        self.ready.clear()
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
            self._public.unlink(missing_ok=True)
        connecting = [c.connecting for c in self._connections if c.connecting is not None]
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._owns_private_dir:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._owns_private_dir = False

    def _check_paths(self) -> None:
        for path in (self._public, self._private_dir / _CLIENT_NAME, self._backend):
            if len(os.fsencode(path)) > _MAX_UNIX_PATH:
                raise ConfigError(
                    f"Unix socket path {path} is {len(os.fsencode(path))} bytes, longer than the "
                    f"{_MAX_UNIX_PATH} a socket address holds (the proxy's private sockets live next to "
                    f"{self._public.name}); put the socket in a shorter directory"
                )

    def _make_private_dir(self) -> None:
        """(Re)create the 0700 directory of the private sockets; never follow or reuse someone else's."""
        try:
            info = self._private_dir.lstat()
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                raise ConfigError(
                    f"{self._private_dir} exists and is not a directory owned by this agent (uid "
                    f"{os.geteuid()}); the agent keeps its private sockets there — remove it"
                )
            shutil.rmtree(self._private_dir)  # left by an agent that did not stop cleanly
        self._private_dir.mkdir(mode=0o700)
        self._owns_private_dir = True
        os.chmod(self._private_dir, 0o700)  # mkdir's mode is filtered by the umask

    def connections_of(self, uid: int) -> int:
        """Connections open now from ``uid``."""
        return self._per_uid.get(uid, 0)

    def _accept(self) -> _Half:
        return _Half(self._admit)

    def _admit(self, client: _Half) -> None:
        """A connection arrived on the public socket: read who made it, then budget and proxy it."""
        transport = client.transport
        assert transport is not None
        try:
            creds = read_peer_credentials(transport.get_extra_info("socket"))
        except OSError as err:  # the peer is gone already
            logger.debug("connection to %s closed before its credentials were read: %s", self._public, err)
            transport.close()
            return
        refusal = self._over_budget(creds.uid)
        if refusal is not None:
            transport.close()
            if self._refusals.should_log(time.monotonic(), refusal):
                logger.warning(
                    "refusing connections to %s from uid %d: %s%s",
                    self._public,
                    creds.uid,
                    refusal,
                    self._refusals.note(refusal),
                )
            return
        transport.pause_reading()  # until the gRPC server is connected to take what the client sends
        self._per_uid[creds.uid] = self._per_uid.get(creds.uid, 0) + 1
        connection = _Connection(client, creds, self._private_dir / f"c-{secrets.token_hex(8)}")
        self._connections.add(connection)
        connection.closed.add_done_callback(lambda _: self._release(connection))
        connection.connecting = asyncio.ensure_future(self._connect(connection))

    def _release(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        self.attestor._forget(connection.key)
        connection.path.unlink(missing_ok=True)
        uid = connection.creds.uid
        left = self._per_uid.pop(uid) - 1
        if left:
            self._per_uid[uid] = left

    def _over_budget(self, uid: int) -> str | None:
        """Why a new connection from ``uid`` is refused (also its log throttle key), or None."""
        if self._per_uid.get(uid, 0) >= self._max_per_uid:
            return (
                f"uid {uid} holds {self._max_per_uid} connections already (limits.max_connections_per_uid); "
                "its processes must close connections they no longer use"
            )
        if len(self._connections) >= self._max_connections:
            return f"{len(self._connections)} connections are open already (limits.max_connections)"
        return None

    async def _connect(self, connection: _Connection) -> None:
        """Register the caller under the path its upstream socket binds, connect that socket to the gRPC
        server, and join the two sides."""
        if connection.closed.done():  # the caller left before its turn came
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            assert connection.client.transport is not None
            sock = connection.client.transport.get_extra_info("socket")
            pidfd = open_peer_pidfd(sock, connection.creds.pid)
            self.attestor._register(connection.key, _Peer(connection.creds, pidfd))
            upstream.bind(str(connection.path))
            upstream.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(upstream, str(self._backend))
            await loop.create_unix_connection(lambda: connection.server, sock=upstream)
        except (ConnectionError, ProcessLookupError) as err:  # the caller or the server went away
            logger.debug("connection %s ended: %s", connection.key, err)
        except OSError as err:
            logger.warning("proxying a connection from %s to the gRPC server failed: %s", self._public, err)
        except Exception:  # a bug: the caller gets a closed connection, not one held open unserved
            logger.exception("proxying a connection from %s to the gRPC server failed", self._public)
        else:
            connection.join()
            return
        finally:
            if not connection.server_connected():  # connecting failed or was cancelled (stop)
                upstream.close()
                connection.close()


class _Half(asyncio.Protocol):
    """One side of a proxied connection. What its transport reads is written to its partner's transport
    in the same callback; when its own write buffer fills, its partner stops reading (backpressure)."""

    def __init__(self, made: Callable[[_Half], None] | None = None) -> None:
        self._made = made
        self.transport: asyncio.Transport | None = None  # set by connection_made
        self.partner: _Half | None = None
        self.connection: _Connection | None = None
        self.got_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._made is not None:
            self._made(self)

    def data_received(self, data: bytes) -> None:
        # A side reads only once its partner is connected: the caller's side is paused until then.
        assert self.partner is not None
        assert self.partner.transport is not None
        self.partner.transport.write(data)

    def eof_received(self) -> bool:
        """Pass the half-close on; the connection ends when both sides have sent theirs."""
        self.got_eof = True
        if self.connection is not None:
            self.connection.on_eof(self)
        return True  # keep our transport open: the other direction may still be sending

    def pause_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            logger.debug("a proxied connection's side closed: %s", exc)
        if self.connection is not None:
            self.connection.close()


class _Connection:
    """A caller's connection through the public socket and the proxy's connection to the gRPC server
    made for it; :attr:`closed` is done once both are closed down."""

    def __init__(self, client: _Half, creds: PeerCredentials, path: Path) -> None:
        self.client = client
        self.server = _Half()
        for half, partner in ((client, self.server), (self.server, client)):
            half.partner, half.connection = partner, self
        self.creds = creds
        self.path = path  # where the upstream socket binds; gRPC reports it as the call's peer
        self.key = f"unix:{path}"
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connecting: asyncio.Task[None] | None = None

    def server_connected(self) -> bool:
        """Whether the proxy's connection to the gRPC server was made (its transport owns the socket)."""
        return self.server.transport is not None

    def join(self) -> None:
        """The gRPC side is connected: let the caller's bytes flow to it."""
        assert self.client.transport is not None
        if self.closed.done():  # the caller left while the server side connected
            self.close()
        else:
            self.client.transport.resume_reading()

    def on_eof(self, source: _Half) -> None:
        """``source`` read the end of its stream: pass the half-close to its partner, and close both
        sides once each has sent its own."""
        sink = source.partner
        if sink is not None and sink.transport is not None and not sink.transport.is_closing():
            with contextlib.suppress(OSError):
                sink.transport.write_eof()
        if self.client.got_eof and self.server.got_eof:
            self.close()

    def close(self) -> None:
        """Close both sides (each flushes what it still buffers); idempotent."""
        for half in (self.client, self.server):
            if half.transport is not None:
                half.transport.close()
        if not self.closed.done():
            self.closed.set_result(None)
