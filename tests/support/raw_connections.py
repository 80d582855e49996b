"""Connections to the CA's HTTPS listeners as an abusive client makes them (ca/capped_listener.py):
raw TCP that never sends a ClientHello, from any 127.0.0.0/8 source; and how a test sees the server
end one, or serve again once slots come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

T = TypeVar("T")

CLOSED_WITHIN = 3.0  # "at once", on a busy 2-core machine


async def raw(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to 127.0.0.1:``port`` from ``source`` (any 127.0.0.0/8 address is this host's)
    that never sends a ClientHello."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server ends the connection within ``within`` seconds (end of stream or a reset)."""
    try:
        async with asyncio.timeout(within):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def one_over_the_cap(
    port: int, held: int, held_from: str = "127.0.0.1", extra_from: str = "127.0.0.1"
) -> tuple[bool, list[bool]]:
    """Open ``held`` raw connections from ``held_from``, then one more from ``extra_from``: whether the
    server closed the extra one at once, and whether each held one is still open. All are closed after."""
    kept = [await raw(port, held_from) for _ in range(held)]
    extra_reader, extra_writer = await raw(port, extra_from)
    extra_closed = await closed_by_server(extra_reader, CLOSED_WITHIN)
    kept_open = [not await closed_by_server(reader, 0.2) for reader, _ in kept]
    for _, writer in [*kept, (extra_reader, extra_writer)]:
        writer.close()
    return extra_closed, kept_open


async def served_eventually(attempt: Callable[[], Awaitable[T]], within: float = 5.0) -> T:
    """``attempt()`` (an HTTPS request), retried while it fails at the transport until ``within`` seconds
    passed: a closed connection's slot is given back on the server's next loop turn."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await attempt()
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
