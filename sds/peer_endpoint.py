"""Serving gRPC on a Unix socket with the caller's kernel credentials available to the servicers.

Python's gRPC does not expose SO_PEERCRED. So the public socket is served by a small asyncio proxy:
for each accepted connection it reads the peer's credentials from the kernel, then connects to the
real gRPC server on a private socket (in a 0700 directory) from a client socket *bound to a path of
its own*. gRPC reports that path as the call's peer (``context.peer() == "unix:<path>"``), so the
servicer looks the credentials up by it. Connections made straight to the private socket have no
entry and are refused; the directory's mode keeps other users from making them at all.

The proxy only copies bytes, with backpressure (``drain``); it never parses HTTP/2.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from sds.attestor import ExecutableDigests, PeerCredentials, attest_process
from spiffe_core.errors import NotAuthorized
from spiffe_core.selectors import Selector

log = logging.getLogger(__name__)
_PEERCRED = struct.Struct("3i")


def read_peer_credentials(sock: socket.socket) -> PeerCredentials:
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return PeerCredentials(pid, uid, gid)


class PeerAttestor:
    """Answers "who is this call from?" for servicers behind an :class:`AttestedEndpoint`."""

    def __init__(self) -> None:
        self._peers: dict[str, PeerCredentials] = {}
        self._digests = ExecutableDigests()

    def register(self, peer: str, creds: PeerCredentials) -> None:
        self._peers[peer] = creds

    def unregister(self, peer: str) -> None:
        self._peers.pop(peer, None)

    def credentials(self, context: grpc.aio.ServicerContext[Any, Any]) -> PeerCredentials:
        creds = self._peers.get(context.peer())
        if creds is None:
            raise NotAuthorized("the caller did not come through the agent's public socket; connect there")
        return creds

    async def attest(self, context: grpc.aio.ServicerContext[Any, Any]) -> frozenset[Selector]:
        return await asyncio.to_thread(attest_process, self.credentials(context), self._digests)


class AttestedEndpoint:
    """A gRPC server on ``public_socket`` whose servicers can attest callers via :attr:`attestor`."""

    def __init__(self, public_socket: Path, *, mode: int = 0o666) -> None:
        self._public = public_socket
        self._mode = mode
        self._private_dir = public_socket.with_name(f".{public_socket.name}.d")
        self._registrations: list[Callable[[grpc.aio.Server], None]] = []
        self.attestor = PeerAttestor()
        self._ids = itertools.count()
        self.ready = asyncio.Event()

    def add_servicer(self, register: Callable[[grpc.aio.Server], None]) -> None:
        self._registrations.append(register)

    @property
    def _backend(self) -> Path:
        return self._private_dir / "grpc.sock"

    async def serve(self) -> None:
        """Serve until cancelled; removes both sockets and the private directory on the way out."""
        shutil.rmtree(self._private_dir, ignore_errors=True)
        self._private_dir.mkdir(mode=0o700, parents=True)
        self._public.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.aio.server()
        for register in self._registrations:
            register(server)
        server.add_insecure_port(f"unix:{self._backend}")
        await server.start()
        with contextlib.suppress(FileNotFoundError):
            self._public.unlink()
        proxy = await asyncio.start_unix_server(self._accept, path=str(self._public))
        os.chmod(self._public, self._mode)
        self.ready.set()
        try:
            async with proxy:
                await proxy.serve_forever()
        finally:
            await server.stop(grace=1)
            self._public.unlink(missing_ok=True)
            shutil.rmtree(self._private_dir, ignore_errors=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        client_path = self._private_dir / f"c{next(self._ids)}.sock"
        peer = f"unix:{client_path}"
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            creds = read_peer_credentials(sock)
            upstream.bind(str(client_path))
            upstream.setblocking(False)
            self.attestor.register(peer, creds)
            await asyncio.get_running_loop().sock_connect(upstream, str(self._backend))
            up_reader, up_writer = await asyncio.open_unix_connection(sock=upstream)
        except OSError as err:
            log.warning("could not proxy a connection to %s: %s", self._public, err)
            upstream.close()
            writer.close()
            self.attestor.unregister(peer)
            client_path.unlink(missing_ok=True)
            return
        try:
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(_pump(reader, up_writer))
                pumps.create_task(_pump(up_reader, writer))
        except* (ConnectionError, OSError):
            pass
        finally:
            self.attestor.unregister(peer)
            client_path.unlink(missing_ok=True)
            for w in (writer, up_writer):
                w.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()
    if sink.can_write_eof():
        with contextlib.suppress(OSError):
            sink.write_eof()
