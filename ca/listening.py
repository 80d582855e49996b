"""TCP listening sockets the CA binds itself, and the one line that says why an address cannot be had.

The CA binds its ports without ``SO_REUSEPORT``, so a port another process listens on is refused with
a line naming the configuration key, instead of two CAs sharing it (docs/configuration.md). gRPC binds
the node API's ports itself and says only that it failed: :func:`why_unbindable` finds out why."""

from __future__ import annotations

import errno
import socket

from spiffe_core.errors import ConfigError


def bind_tcp(address: str, key: str, *, keep: bool) -> socket.socket | None:
    """Bind ``address`` (host:port) without SO_REUSEPORT, so a port another process listens on is refused
    here as one line naming ``key`` (instead of two CAs sharing it); closed again unless ``keep``."""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return None
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        raise ConfigError(f"{key} {address}: cannot resolve {host!r} ({err.strerror}); use an IP address") from err
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not REUSEPORT: sharing stays refused
        sock.bind(sockaddr)
    except OSError as err:
        sock.close()
        raise ConfigError(_address_problem(key, address, err)) from err
    if not keep:
        sock.close()
        return None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _address_problem(key: str, address: str, err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return f"{key} {address} is in use; stop what listens there or set {key} to a free port"
    return f"{key} {address} cannot be bound ({err.strerror}); set {key} to an address of this host"


def why_unbindable(address: str, key: str) -> str:
    """Why ``address`` (the value of ``key``) could not be bound a moment ago, found by binding it again;
    a general line when it can be bound now (the listener that held it is gone)."""
    try:
        bind_tcp(address, key, keep=False)
    except ConfigError as err:
        return str(err)
    return f"{key} {address} could not be bound; set {key} to a free port"
