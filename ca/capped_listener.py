"""A TCP listening socket that counts its connections per source address and in all from accept, and
bounds the TLS handshake.

uvicorn (and asyncio under it) only tells the app's protocol about a TLS connection once its handshake
is done, and asyncio waits 60 s for one. A cap kept in the protocol therefore lets anyone who can reach
the port hold any number of raw TCP connections that never send a ClientHello, until the process runs
out of file descriptors. :class:`CappedListener` is the listening socket handed to uvicorn (or to
``asyncio.start_server``, for the federation bundle endpoint) instead:
asyncio's selector loop calls ``accept()`` on the very socket object it was given
(``selector_events._accept_connection``), so the count starts there, before any byte is read, and
TLS is still terminated by asyncio's own SSL transport (client certificates keep working).

- A connection over its source's cap, or over the listener's total (every source together: many
  addresses, an IPv6 /64 or a botnet, add up to no more), is closed at once (logged, throttled) and
  never reaches asyncio.
- Each accepted connection is an :class:`_AcceptedSocket`; asyncio's transports close their socket
  through ``sock.close()`` whatever ends the connection (handshake failure or timeout, abort, normal
  close), and that gives its slots (its source's and the total's) back, once (a ``weakref.finalize``,
  which also covers a socket that is dropped without being closed).
- A connection whose handshake has not ended ``handshake_timeout`` seconds after accept is shut down
  (``shutdown(SHUT_RDWR)``, not closed: the fd stays the transport's until it sees the end and closes
  it the normal way). The server says when the handshake is done, :meth:`CappedListener.connected`:
  uvicorn's protocol from its ``connection_made``, the bundle endpoint once its ``start_tls`` returns.
  uvicorn offers no way to pass ``ssl_handshake_timeout`` to
  ``loop.create_server``, hence this deadline of our own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import weakref
from typing import Any

from spiffe_core.backoff import LogThrottle

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_SECONDS = 10.0
_throttle = LogThrottle()  # keyed by listener: a flood on one must not silence another's lines


class _Budget:
    """Open connections per source address and in all. Slots are given back from ``close()``, which a
    garbage collection may run on another thread: hence the lock."""

    def __init__(self, per_source: int, total: int) -> None:
        self.per_source = per_source
        self.total = total
        self._open: dict[str, int] = {}
        self._in_all = 0
        self._lock = threading.Lock()

    def take(self, source: str) -> str | None:
        """Take a slot for ``source``; if there is none, why not (nothing is taken then)."""
        with self._lock:
            if self._in_all >= self.total:
                return f"the listener holds {self.total} open already (all sources)"
            held = self._open.get(source, 0)
            if held >= self.per_source:
                return f"it holds {self.per_source} open already"
            self._open[source] = held + 1
            self._in_all += 1
            return None

    def give_back(self, source: str) -> None:
        with self._lock:
            left = self._open.get(source, 1) - 1
            if left > 0:
                self._open[source] = left
            else:
                self._open.pop(source, None)
            self._in_all -= 1


class _AcceptedSocket(socket.socket):
    """One accepted connection, holding one slot of its source and one of the total until it is closed."""

    def __init__(self, conn: socket.socket, budget: _Budget, source: str) -> None:
        super().__init__(conn.family, conn.type, conn.proto, fileno=conn.detach())
        self._give_back = weakref.finalize(self, budget.give_back, source)  # runs at most once
        self._give_back.atexit = False
        self.deadline: asyncio.TimerHandle | None = None

    def handshake_done(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def close(self) -> None:
        super().close()
        self.handshake_done()
        self._give_back()


def _drop_stalled(ref: weakref.ref[_AcceptedSocket], name: str, source: str, timeout: float) -> None:
    """The handshake deadline: end a connection still in its handshake (module docstring)."""
    accepted = ref()
    if accepted is None or accepted.fileno() == -1:
        return
    if _throttle.should_log(time.monotonic(), f"{name} stalled"):
        log.warning(
            "dropped a %s connection from %s: no TLS handshake within %g s%s",
            name,
            source,
            timeout,
            _throttle.note(f"{name} stalled"),
        )
    with contextlib.suppress(OSError):  # already reset by the peer: the transport sees that on its own
        accepted.shutdown(socket.SHUT_RDWR)


class CappedListener(socket.socket):
    """``sock`` (bound and listening; it is detached, this object owns its descriptor from now on) with
    at most ``per_source`` connections per source address and ``total`` in all, each given
    ``handshake_timeout`` seconds to finish its TLS handshake. ``name`` is the listener's in the log.
    Serve it on one event loop."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        per_source: int,
        total: int,
        name: str,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._budget = _Budget(per_source, total)
        self._name = name
        self._handshake_timeout = handshake_timeout
        self._handshaking: weakref.WeakValueDictionary[int, _AcceptedSocket] = weakref.WeakValueDictionary()

    def accept(self) -> tuple[socket.socket, Any]:
        """The next connection, counted against its source and the total; one over either cap is closed
        here and reported as ``ConnectionAbortedError``, which asyncio's accept loop takes as "none
        waiting" (the listener stays readable, so it comes back for the rest on the next turn)."""
        conn, address = super().accept()
        source = str(address[0])
        refusal = self._budget.take(source)
        if refusal is not None:
            conn.close()
            if _throttle.should_log(time.monotonic(), f"{self._name} refused"):
                log.warning(
                    "refused a %s connection from %s: %s%s",
                    self._name,
                    source,
                    refusal,
                    _throttle.note(f"{self._name} refused"),
                )
            raise ConnectionAbortedError(f"refused {source}: {refusal}")
        accepted = _AcceptedSocket(conn, self._budget, source)
        accepted.deadline = asyncio.get_running_loop().call_later(
            self._handshake_timeout, _drop_stalled, weakref.ref(accepted), self._name, source, self._handshake_timeout
        )
        self._handshaking[accepted.fileno()] = accepted
        return accepted, address

    def connected(self, transport: asyncio.BaseTransport) -> None:
        """The connection on ``transport`` finished its handshake: its deadline no longer applies."""
        sock = transport.get_extra_info("socket")
        accepted = None if sock is None else self._handshaking.pop(sock.fileno(), None)
        if accepted is not None:
            accepted.handshake_done()
