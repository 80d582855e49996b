"""The admin listeners over real sockets (ca/admin_transport.py): uvicorn with the admin protocol hands
the app the TLS client's chain and the Unix peer's credentials, and the HTTPS context trusts roots the
bundle gains while it runs. The per-source connection cap: test_capped_listener.py."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography import x509

from ca.admin_guard import PEER_CREDENTIALS_EXTENSION
from ca.admin_transport import AdminTlsContext, ServingSvidCertificate, admin_protocol
from ca.server_identity import ServingCredentials
from spiffe_core.bundle import Bundle
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import X509Svid
from tests.support.agent_pki import SigningCa

NOW = datetime.now(UTC)
TD = TrustDomain("example.org")
SERVER = SpiffeId.parse("spiffe://example.org/trustmesh/server")
ALICE = SpiffeId.parse("spiffe://example.org/admins/alice")
CA = SigningCa.create(TD, NOW)
STARTUP_TIMEOUT = 10.0


def spiffe_id_of(pem: str) -> str:
    san = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return str(san.value.get_values_for_type(x509.UniformResourceIdentifier)[0])


async def echo_scope(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what the connection told the app: the client chain's SPIFFE IDs, the peer's uid and pid."""
    extensions = scope.get("extensions") or {}
    chain = (extensions.get("tls") or {}).get("client_cert_chain") or []
    creds = extensions.get(PEER_CREDENTIALS_EXTENSION)
    ids = [spiffe_id_of(pem) for pem in chain]
    body = repr({"chain": ids, "length": len(chain), "creds": None if creds is None else (creds.uid, creds.pid)})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})


def issue(ca: SigningCa, spiffe_id: SpiffeId) -> X509Svid:
    return ca.issue(spiffe_id, not_before=NOW - timedelta(minutes=1), not_after=NOW + timedelta(hours=1))


def serving(svid: X509Svid) -> Callable[[], ServingCredentials]:
    credentials = ServingCredentials(svid.key_pem(), svid.chain_pem(), NOW, NOW + timedelta(hours=1), "test")
    return lambda: credentials


@asynccontextmanager
async def serve(sock: socket.socket, tls: ssl.SSLContext | None = None) -> AsyncIterator[None]:
    config = uvicorn.Config(
        echo_scope,
        http=admin_protocol(),
        ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
        log_config=None,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag, it has no event
            await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


def tcp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def client_context(svid: X509Svid | None, tmp_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if svid is not None:
        path = tmp_path / "client.pem"
        path.write_bytes(svid.key_pem() + svid.chain_pem())
        context.load_cert_chain(path)
    return context


async def get(url: str, **kwargs: Any) -> str:
    def call() -> str:
        with httpx.Client(timeout=5, **kwargs) as client:
            return client.get(url).text

    return await asyncio.to_thread(call)


def tls_context(bundle: Callable[[], Bundle]) -> AdminTlsContext:
    tls = AdminTlsContext(ServingSvidCertificate(serving(issue(CA, SERVER))), bundle)
    tls.refresh()
    return tls


async def test_the_app_sees_the_tls_client_chain_leaf_first(tmp_path: Path) -> None:
    sock = tcp_socket()
    url = f"https://127.0.0.1:{sock.getsockname()[1]}/"
    async with serve(sock, tls_context(CA.bundle).context):
        seen = await get(url, verify=client_context(issue(CA, ALICE), tmp_path))

    assert seen == repr({"chain": [str(ALICE)], "length": 1, "creds": None})


async def test_a_client_without_a_certificate_is_served_with_an_empty_chain(tmp_path: Path) -> None:
    sock = tcp_socket()
    url = f"https://127.0.0.1:{sock.getsockname()[1]}/"
    async with serve(sock, tls_context(CA.bundle).context):
        seen = await get(url, verify=client_context(None, tmp_path))

    assert seen == repr({"chain": [], "length": 0, "creds": None})


async def test_a_root_added_to_the_bundle_is_trusted_after_a_refresh(tmp_path: Path) -> None:
    new_ca = SigningCa.create(TD, NOW)
    bundle = CA.bundle()
    tls = tls_context(lambda: bundle)
    sock = tcp_socket()
    url = f"https://127.0.0.1:{sock.getsockname()[1]}/"
    new_client = client_context(issue(new_ca, ALICE), tmp_path)
    async with serve(sock, tls.context):
        try:
            await get(url, verify=new_client)
        except httpx.HTTPError:
            refused_before = True
        else:
            refused_before = False
        bundle = bundle.with_changes(x509_authorities=(*bundle.x509_authorities, new_ca.cert))
        tls.refresh()
        seen = await get(url, verify=new_client)

    assert refused_before
    assert seen == repr({"chain": [str(ALICE)], "length": 1, "creds": None})


async def test_the_app_sees_the_unix_socket_peers_credentials(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    async with serve(sock):
        seen = await get("http://ca/", transport=httpx.HTTPTransport(uds=str(path)))

    assert seen == repr({"chain": [], "length": 0, "creds": (os.getuid(), os.getpid())})
