"""The SPIFFE bundle endpoint (issue 9, deliverable 1): served over real TLS sockets with both profiles,
answering the published bundle; read back by httpx and by a reader as strict as gRPC's (A87). Its
connections are bounded as the other HTTPS listeners' are (ca/capped_listener.py)."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from ca.config import load_config
from ca.federation.endpoint import BundleEndpoint, SpiffeServingContexts, WebServingContexts
from ca.server import CaParts, build_service
from ca.server_identity import server_id
from ca.store.records import AuthorityKind
from spiffe_core.bundle import Bundle
from spiffe_core.peers import peer_certificate_chain
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import verify_x509_svid
from tests.support.clock import FakeClock
from tests.support.raw_connections import closed_by_server, one_over_the_cap, raw, served_eventually
from tests.support.store import OFFICER
from tests.support.web_pki import write_web_pki

TD = TrustDomain("a.test")
HOLD = timedelta(minutes=10)  # two of the test CA's refresh hints (5 m by default)


def _parts(directory: Path) -> CaParts:
    config_file = directory / "ca.toml"
    config_file.write_text(f'trust_domain = "{TD.name}"\n[ca.key_manager]\nkind = "memory"\n')
    return build_service(load_config(config_file, {}))


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> CaParts:
    return _parts(tmp_path_factory.mktemp("ca"))


async def _serving(endpoint: BundleEndpoint) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    task = asyncio.create_task(endpoint.serve(sock))
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


@pytest.fixture
async def spiffe_url(parts: CaParts) -> AsyncIterator[str]:
    async for url in _serving(_spiffe_endpoint(parts)):
        yield url


def _spiffe_endpoint(parts: CaParts, **bounds: Any) -> BundleEndpoint:
    contexts = SpiffeServingContexts(parts.identity, parts.service.get_bundle, HOLD, parts.clock)
    return BundleEndpoint(parts.service.get_bundle, contexts, **bounds)


def _unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # https_spiffe: the chain is checked as an SVID below
    return context


async def _get(url: str, verify: ssl.SSLContext, method: str = "GET") -> tuple[httpx.Response, list[x509.Certificate]]:
    async with httpx.AsyncClient(verify=verify, timeout=5) as client, client.stream(method, url) as response:
        chain = peer_certificate_chain(response.extensions["network_stream"].get_extra_info("ssl_object"))
        await response.aread()
        return response, chain


async def test_https_spiffe_serves_the_published_bundle_with_sequence_and_refresh_hint(
    parts: CaParts, spiffe_url: str
) -> None:
    response, _ = await _get(spiffe_url + "/", _unverified())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    published = parts.service.get_bundle()
    assert doc["spiffe_sequence"] == published.sequence
    assert doc["spiffe_refresh_hint"] == 300
    assert Bundle.parse_jwks(TD, response.content) == published


async def test_https_spiffe_presents_the_cas_own_svid_and_follows_its_renewal(parts: CaParts, spiffe_url: str) -> None:
    _, first = await _get(spiffe_url, _unverified())
    presented, _ = verify_x509_svid(first, parts.service.get_bundle(), datetime.now(UTC))
    assert presented == server_id(TD)
    parts.identity.rotate()
    _, second = await _get(spiffe_url, _unverified())
    assert second[0].serial_number != first[0].serial_number
    assert second[0] == x509.load_pem_x509_certificates(parts.identity.get_current().cert_chain_pem)[0]


async def test_after_an_emergency_rotation_partners_can_verify_the_endpoint_until_they_hold_the_new_authority(
    tmp_path: Path,
) -> None:
    rotating = _parts(tmp_path)
    clock = FakeClock(datetime.now(UTC))
    contexts = SpiffeServingContexts(rotating.identity, rotating.service.get_bundle, HOLD, clock)
    partners_copy = rotating.service.get_bundle()  # what a partner fetched before the rotation
    async for url in _serving(BundleEndpoint(rotating.service.get_bundle, contexts)):
        _, before = await _get(url, _unverified())
        rotating.officer.rotate_now(AuthorityKind.X509, OFFICER)  # a new authority signs at once; no partner holds it
        rotating.identity.rotate()  # what the serving identity does on the change

        response, held = await _get(url, _unverified())
        assert held[0] == before[0]  # the SVID a partner's copy verifies, so it can fetch the new bundle
        verify_x509_svid(held, partners_copy, datetime.now(UTC))
        assert Bundle.parse_jwks(TD, response.content) == rotating.service.get_bundle()
        clock.advance(HOLD - timedelta(seconds=1))
        assert (await _get(url, _unverified()))[1][0] == before[0]

        clock.advance(timedelta(seconds=1))  # published for two refresh hints: partners hold it now
        _, renewed = await _get(url, _unverified())
        assert renewed[0] == x509.load_pem_x509_certificates(rotating.identity.get_current().cert_chain_pem)[0]


async def test_once_the_old_authority_leaves_the_bundle_the_endpoint_presents_the_new_svid_at_once(
    tmp_path: Path,
) -> None:
    rotating = _parts(tmp_path)
    contexts = SpiffeServingContexts(rotating.identity, rotating.service.get_bundle, HOLD, FakeClock(datetime.now(UTC)))
    async for url in _serving(BundleEndpoint(rotating.service.get_bundle, contexts)):
        _, before = await _get(url, _unverified())
        old = rotating.identity.get_current().authority_id
        rotating.officer.rotate_now(AuthorityKind.X509, OFFICER)
        rotating.identity.rotate()
        rotating.officer.revoke(old, OFFICER)  # no partner may trust it any more: nothing it signed is presented

        _, after = await _get(url, _unverified())
        assert after[0] != before[0]
        verify_x509_svid(after, rotating.service.get_bundle(), datetime.now(UTC))


async def test_https_web_serves_the_configured_certificate_to_clients_trusting_its_root(
    parts: CaParts, tmp_path: Path
) -> None:
    pki = write_web_pki(tmp_path)
    endpoint = BundleEndpoint(parts.service.get_bundle, WebServingContexts(pki.cert_file, pki.key_file))
    async for url in _serving(endpoint):
        response, _ = await _get(url, ssl.create_default_context(cafile=str(pki.root_file)))
        assert Bundle.parse_jwks(TD, response.content) == parts.service.get_bundle()
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await _get(url, ssl.create_default_context())  # the system roots do not know it


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/other", 404), ("POST", "/", 405), ("DELETE", "/", 405)]
)
async def test_only_get_of_the_root_is_served(spiffe_url: str, method: str, path: str, status: int) -> None:
    response, _ = await _get(spiffe_url + path, _unverified(), method)
    assert response.status_code == status


async def test_an_oversized_request_head_is_cut_off_without_an_answer(spiffe_url: str) -> None:
    host, port = spiffe_url.removeprefix("https://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=_unverified())
    writer.write(b"GET / HTTP/1.1\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_connections_beyond_a_sources_cap_are_closed_at_once_and_fetches_work_before_and_after(
    parts: CaParts,
) -> None:
    async for url in _serving(_spiffe_endpoint(parts, max_connections_per_source=2)):
        port = int(url.rsplit(":", 1)[1])
        before, _ = await _get(url, _unverified())
        third_closed, held_open = await one_over_the_cap(port, held=2)
        after, _ = await served_eventually(functools.partial(_get, url, _unverified()))

    assert third_closed
    assert held_open == [True, True]
    assert before.status_code == after.status_code == 200
    assert Bundle.parse_jwks(TD, after.content) == parts.service.get_bundle()


async def test_a_stalled_handshake_is_dropped_after_the_handshake_bound(parts: CaParts) -> None:
    async for url in _serving(_spiffe_endpoint(parts, handshake_timeout=0.5)):
        reader, writer = await raw(int(url.rsplit(":", 1)[1]))
        started = time.monotonic()
        dropped = await closed_by_server(reader, 5.0)  # the request timeout (10 s) would be later
        after = time.monotonic() - started
        writer.close()

    assert dropped
    assert after >= 0.4


async def test_a_connection_past_its_handshake_outlives_the_handshake_bound(parts: CaParts) -> None:
    async for url in _serving(_spiffe_endpoint(parts, handshake_timeout=0.3)):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]), ssl=_unverified())
        await asyncio.sleep(1.0)  # past the handshake bound, within the request timeout
        writer.write(b"GET / HTTP/1.1\r\nHost: ca\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()

    assert reply.startswith(b"HTTP/1.1 200")


def a87_strict_x509_bundle(doc: bytes) -> list[x509.Certificate] | None:
    """gRPC's SPIFFE bundle-map reader as grpc proposal A87 describes it: only ``keys`` and
    ``spiffe_sequence`` are read; of each key only ``kty``, ``use`` and ``x5c``; every key must be an
    X.509 authority (``use`` = x509-svid, ``kty`` EC or RSA, exactly one certificate in ``x5c``); any
    problem drops the whole bundle (None) instead of skipping the key."""
    try:
        bundle: Any = json.loads(doc)
        keys = bundle["keys"]
        sequence = bundle.get("spiffe_sequence", 0)
        if not isinstance(keys, list) or not isinstance(sequence, int):
            return None
        certificates = []
        for key in keys:
            if key["use"] != "x509-svid" or key["kty"] not in ("EC", "RSA"):
                return None
            (der,) = key["x5c"]
            certificates.append(x509.load_der_x509_certificate(base64.b64decode(der, validate=True)))
        return certificates
    except (KeyError, TypeError, ValueError):
        return None


async def test_the_x509_view_parses_under_grpcs_strict_bundle_map_reader(parts: CaParts, spiffe_url: str) -> None:
    response, _ = await _get(spiffe_url + "/?use=x509-svid", _unverified())
    certificates = a87_strict_x509_bundle(response.content)
    assert certificates == list(parts.service.get_bundle().x509_authorities)
    assert response.json()["spiffe_sequence"] == parts.service.get_bundle().sequence


async def test_every_x509_key_of_the_full_bundle_passes_the_strict_rules(spiffe_url: str) -> None:
    response, _ = await _get(spiffe_url + "/", _unverified())
    doc = response.json()
    x509_keys = [k for k in doc["keys"] if k["use"] == "x509-svid"]
    assert x509_keys
    assert a87_strict_x509_bundle(json.dumps({**doc, "keys": x509_keys}).encode()) is not None


STRICT_REFUSALS: list[Callable[[dict[str, Any]], None]] = [
    lambda key: key.update(use="jwt-svid"),
    lambda key: key.update(kty="OKP"),
    lambda key: key.update(x5c=[]),
    lambda key: key.update(x5c=["not base64!"]),
]


@pytest.mark.parametrize("spoil", STRICT_REFUSALS, ids=["jwt-use", "unknown-kty", "no-cert", "garbage-cert"])
async def test_the_strict_reader_drops_the_whole_bundle_on_one_bad_key(
    spiffe_url: str, spoil: Callable[[dict[str, Any]], None]
) -> None:
    """The reader above is strict for real: one spoiled key loses every key, as A87 says."""
    response, _ = await _get(spiffe_url + "/?use=x509-svid", _unverified())
    doc = response.json()
    doc["keys"].append(dict(doc["keys"][0]))
    spoil(doc["keys"][-1])
    assert a87_strict_x509_bundle(json.dumps(doc).encode()) is None
