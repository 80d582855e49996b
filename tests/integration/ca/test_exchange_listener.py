"""The agentless exchange's listener over a real TLS socket (ca/exchange_listener.py, docs/bridge.md
"Bounds"): a body over the request bound is refused 413 before the exchange sees it, whether it
announces its length or streams it chunked, and a source holding its 8 connections gets no ninth,
whether it holds them with TLS sessions or with raw TCP connections that never start a handshake
(counted from accept: the ninth is closed at once)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx

from bridge.exchange import EXCHANGE_PATH, MAX_REQUEST_BYTES, ExchangeReply
from ca.exchange_listener import MAX_CONNECTIONS_PER_SOURCE, serve_exchange
from ca.server_identity import ServingCredentials
from spiffe_core.errors import InvalidArgument
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.processes import wait_until

NOW = datetime.now(UTC)
SERVER = SpiffeId.parse("spiffe://example.org/trustmesh/server")
SVID = SigningCa.create(TrustDomain("example.org"), NOW).issue(
    SERVER, not_before=NOW - timedelta(minutes=1), not_after=NOW + timedelta(hours=1)
)
CREDENTIALS = ServingCredentials(SVID.key_pem(), SVID.chain_pem(), NOW, NOW + timedelta(hours=1), "test")


class CountingOps:
    """An exchange that refuses everything, counting the bodies that reached it."""

    def __init__(self) -> None:
        self.bodies: list[int] = []

    def exchange(self, body: bytes, source: str) -> ExchangeReply:
        self.bodies.append(len(body))
        raise InvalidArgument("not a request")


async def _ready() -> None:
    return None


@asynccontextmanager
async def listening(ops: CountingOps) -> AsyncIterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(32)
    port = int(sock.getsockname()[1])
    task = asyncio.create_task(serve_exchange(ops, sock, lambda: CREDENTIALS, _ready))

    def accepting() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    await asyncio.to_thread(wait_until, accepting, 10, "the exchange listener")
    try:
        yield port
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


def post(port: int, content: bytes | Iterator[bytes]) -> httpx.Response:
    with httpx.Client(verify=False, timeout=10) as client:
        return client.post(f"https://127.0.0.1:{port}{EXCHANGE_PATH}", content=content)


def post_or_refused(port: int) -> str:
    try:
        return str(post(port, b"{}").status_code)
    except httpx.TransportError:
        return "refused"


async def test_a_body_over_the_bound_is_refused_413_before_the_exchange_reads_it() -> None:
    ops = CountingOps()
    async with listening(ops) as port:
        over = await asyncio.to_thread(post, port, b"x" * (MAX_REQUEST_BYTES + 1))
        within = await asyncio.to_thread(post, port, b"x" * MAX_REQUEST_BYTES)

    assert over.status_code == 413
    assert within.status_code == 400
    assert ops.bodies == [MAX_REQUEST_BYTES]


async def test_a_chunked_body_without_a_length_is_cut_off_at_the_bound() -> None:
    ops = CountingOps()
    chunks = (b"x" * 16384 for _ in range(MAX_REQUEST_BYTES // 16384 + 2))
    async with listening(ops) as port:
        reply = await asyncio.to_thread(post, port, chunks)

    assert reply.status_code == 413
    assert ops.bodies == []


async def hold_all_then_post(port: int, context: ssl.SSLContext | None) -> tuple[str, int]:
    """Hold the source's every connection (TLS sessions with ``context``, else raw TCP connections that
    send nothing), try one more request, let go of them, request again: the extra request's outcome and
    the later one's status."""
    held = [await asyncio.open_connection("127.0.0.1", port, ssl=context) for _ in range(MAX_CONNECTIONS_PER_SOURCE)]
    await asyncio.sleep(0.2)  # the server has taken them all
    extra = await asyncio.to_thread(post_or_refused, port)
    for _, held_writer in held:
        held_writer.close()
    await asyncio.sleep(0.2)  # the held ones are gone
    served = await asyncio.to_thread(post, port, b"{}")
    return extra, served.status_code


async def test_a_source_holding_its_connections_gets_no_more() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with listening(CountingOps()) as port:
        extra, served = await hold_all_then_post(port, context)

    assert extra == "refused"
    assert served == 400


async def test_raw_connections_without_a_handshake_count_against_the_cap() -> None:
    async with listening(CountingOps()) as port:
        extra, served = await hold_all_then_post(port, None)

    assert extra == "refused"
    assert served == 400
