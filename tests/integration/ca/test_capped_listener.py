"""The HTTPS listeners' connection bounds over real sockets (ca/capped_listener.py, served by
ca.admin_listener.serve_https as the admin API and the agentless exchange are): raw TCP connections
count against their source's cap and the listener's total from accept, before any TLS handshake; a
handshake that does not end within the bound is dropped; slots come back when connections close;
client certificates still reach the app."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from ca.admin_listener import serve_https
from ca.admin_transport import AdminTlsContext, ServingSvidCertificate
from ca.server_identity import ServingCredentials
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.raw_connections import closed_by_server, one_over_the_cap, raw, served_eventually

NOW = datetime.now(UTC)
CA = SigningCa.create(TrustDomain("example.org"), NOW)
SERVER = SpiffeId.parse("spiffe://example.org/trustmesh/server")
ALICE = SpiffeId.parse("spiffe://example.org/admins/alice")
LONG_BOUND = 30.0  # a handshake bound no test here waits for


def issue(spiffe_id: SpiffeId) -> tuple[bytes, bytes]:
    svid = CA.issue(spiffe_id, not_before=NOW - timedelta(minutes=1), not_after=NOW + timedelta(hours=1))
    return svid.key_pem(), svid.chain_pem()


SERVING = ServingCredentials(*issue(SERVER), NOW, NOW + timedelta(hours=1), "test")


def app() -> FastAPI:
    """Answers with how many client certificates the connection presented."""
    api = FastAPI()

    @api.get("/")
    def chain(request: Request) -> dict[str, int]:
        tls = request.scope.get("extensions", {}).get("tls") or {}
        return {"client_certs": len(tls.get("client_cert_chain") or [])}

    return api


async def _ready() -> None:
    return None


@asynccontextmanager
async def listening(
    per_source: int, total: int = 64, handshake_timeout: float = LONG_BOUND, name: str = "test"
) -> AsyncIterator[int]:
    """``serve_https`` on a fresh 127.0.0.1 port with the admin listener's TLS context (client
    certificates asked for). The socket listens before serving starts, so connections made at once wait
    in the backlog and are accepted in order."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = int(sock.getsockname()[1])
    tls = AdminTlsContext(ServingSvidCertificate(lambda: SERVING), CA.bundle)
    task = asyncio.create_task(
        serve_https(
            app(),
            sock,
            tls,
            _ready,
            name=name,
            max_connections_per_source=per_source,
            max_connections=total,
            handshake_timeout=handshake_timeout,
        )
    )
    try:
        yield port
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def client(tmp_path: Path, certificate: tuple[bytes, bytes] | None = None, source: str = "127.0.0.1") -> httpx.Client:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certificate is not None:
        path = tmp_path / "client.pem"
        path.write_bytes(certificate[0] + certificate[1])
        context.load_cert_chain(path)
    return httpx.Client(transport=httpx.HTTPTransport(verify=context, local_address=source), timeout=5)


async def get_eventually(port: int, tmp_path: Path, source: str = "127.0.0.1") -> httpx.Response:
    """GET / over HTTPS from ``source``, retried until served."""

    def get() -> httpx.Response:
        with client(tmp_path, source=source) as http:
            return http.get(f"https://127.0.0.1:{port}/")

    return await served_eventually(lambda: asyncio.to_thread(get))


async def test_raw_connections_beyond_the_per_source_cap_are_closed_at_once(tmp_path: Path) -> None:
    async with listening(per_source=2) as port:
        third_closed, held_open = await one_over_the_cap(port, held=2)
        served = await get_eventually(port, tmp_path)

    assert third_closed
    assert held_open == [True, True]
    assert served.json() == {"client_certs": 0}


async def test_beyond_the_total_a_connection_from_another_source_is_closed_at_once_until_slots_come_back(
    tmp_path: Path,
) -> None:
    async with listening(per_source=4, total=2) as port:
        other_closed, held_open = await one_over_the_cap(port, held=2, held_from="127.0.0.1", extra_from="127.0.0.2")
        served = await get_eventually(port, tmp_path, source="127.0.0.2")

    assert other_closed
    assert held_open == [True, True]
    assert served.json() == {"client_certs": 0}


async def test_a_flood_on_one_listener_does_not_silence_anothers_refusals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusals are logged at most once a minute, per listener: the federation bundle endpoint under
    a flood must not hide that the admin listener refuses connections too."""
    async with (
        listening(per_source=1, name="flooded bundle endpoint") as flooded,
        listening(per_source=1, name="quiet admin") as quiet,
    ):
        held = [await raw(port) for port in (flooded, quiet)]
        for port in (flooded, flooded, flooded, quiet):
            reader, writer = await raw(port)
            assert await closed_by_server(reader, 5.0)
            writer.close()
        for _, writer in held:
            writer.close()
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a ")]
    assert [line.split(" connection")[0] for line in refusals] == [
        "refused a flooded bundle endpoint",
        "refused a quiet admin",
    ]


async def test_a_stalled_handshake_is_dropped_after_the_bound_and_its_slot_given_back(tmp_path: Path) -> None:
    async with listening(per_source=1, handshake_timeout=0.5) as port:
        reader, writer = await raw(port)
        started = time.monotonic()
        dropped = await closed_by_server(reader, 5.0)
        after = time.monotonic() - started
        served = await get_eventually(port, tmp_path)  # the cap is 1: the slot is back
        writer.close()

    assert dropped
    assert after >= 0.4
    assert served.json() == {"client_certs": 0}


async def test_a_connection_whose_handshake_ended_outlives_the_handshake_bound() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with listening(per_source=1, handshake_timeout=0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        await asyncio.sleep(1.0)  # past the bound, within the keep-alive
        writer.write(b"GET / HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            reply = await reader.read()
        writer.close()

    assert reply.startswith(b"HTTP/1.1 200")


async def test_a_client_certificate_reaches_the_app_through_the_capped_listener(tmp_path: Path) -> None:
    async with listening(per_source=2) as port:

        def with_certificate() -> httpx.Response:
            with client(tmp_path, issue(ALICE)) as http:
                return http.get(f"https://127.0.0.1:{port}/")

        reply = await asyncio.to_thread(with_certificate)

    assert reply.json() == {"client_certs": 1}
