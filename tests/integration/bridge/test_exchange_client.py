"""bridge/exchange_client.py over real sockets: the host sends its request only to a server that proves
to be the CA (an X509-SVID for spiffe://<td>/trustmesh/server chaining to its bundle); an impostor
receives not one byte of it, and an unreachable CA is named as such."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.exchange import ExchangeRequest
from bridge.exchange_client import ExchangeServer, ServerNotTrusted, exchange
from bridge.legacy_chain import load_certificates
from bridge.possession import load_signing_key
from spiffe_core.errors import UpstreamUnavailable
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.enterprise_pki import EnterprisePki
from tests.support.processes import free_port

NOW = datetime.now(UTC)
TD = TrustDomain("example.org")
CA = SigningCa.create(TD, NOW)
TIMEOUT = 5.0


class Impostor:
    """A TLS server presenting ``cert_pem`` + ``key_pem`` to one client; counts what the client sends."""

    def __init__(self, directory: Path, cert_pem: bytes, key_pem: bytes) -> None:
        (directory / "server.pem").write_bytes(key_pem + cert_pem)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(directory / "server.pem")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TIMEOUT)
        self.port = self._listener.getsockname()[1]
        self.received = -1
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self._listener:
            conn, _ = self._listener.accept()
            conn.settimeout(TIMEOUT)
            with self._context.wrap_socket(conn, server_side=True) as tls:
                received = b""
                while chunk := tls.recv(65536):  # until the client closes
                    received += chunk
                self.received = len(received)

    def join(self) -> None:
        self._thread.join(TIMEOUT)


@pytest.fixture
def request_for_web(enterprise_pki: EnterprisePki) -> ExchangeRequest:
    chain = load_certificates(enterprise_pki.web.chain.read_bytes(), "web")
    key = load_signing_key(enterprise_pki.web.key.read_bytes(), "web key")
    svid_key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(svid_key, hashes.SHA256())
    return ExchangeRequest.make(chain, key, csr, SpiffeId.parse("spiffe://example.org/trustmesh/server"), NOW)


@pytest.fixture
def workload_impostor(tmp_path: Path) -> Iterator[Impostor]:
    """A server with a valid X509-SVID of the trust domain, but a workload's, not the CA's."""
    svid = CA.issue(SpiffeId.parse("spiffe://example.org/web"), not_before=NOW, not_after=NOW + timedelta(hours=1))
    impostor = Impostor(tmp_path, svid.chain_pem(), svid.key_pem())
    yield impostor
    impostor.join()


def test_a_server_with_another_svid_of_the_trust_domain_is_refused_before_anything_is_sent(
    workload_impostor: Impostor, request_for_web: ExchangeRequest
) -> None:
    server = ExchangeServer(f"127.0.0.1:{workload_impostor.port}", CA.bundle())

    with pytest.raises(ServerNotTrusted, match=r"presented SPIFFE ID spiffe://example\.org/web, not the CA's"):
        exchange(server, request_for_web, timeout=TIMEOUT)
    workload_impostor.join()

    assert workload_impostor.received == 0


def test_a_server_with_an_enterprise_certificate_is_refused_before_anything_is_sent(
    enterprise_pki: EnterprisePki, tmp_path: Path, request_for_web: ExchangeRequest
) -> None:
    web = enterprise_pki.web
    impostor = Impostor(tmp_path, web.chain.read_bytes(), web.key.read_bytes())

    with pytest.raises(ServerNotTrusted, match=r"presented no valid X509-SVID of example\.org"):
        exchange(ExchangeServer(f"127.0.0.1:{impostor.port}", CA.bundle()), request_for_web, timeout=TIMEOUT)
    impostor.join()

    assert impostor.received == 0


def test_an_unreachable_ca_is_named_with_what_to_check(request_for_web: ExchangeRequest) -> None:
    server = ExchangeServer(f"127.0.0.1:{free_port()}", CA.bundle())

    with pytest.raises(UpstreamUnavailable, match=r"^cannot reach the CA's exchange listener at 127\.0\.0\.1:\d+ "):
        exchange(server, request_for_web, timeout=TIMEOUT)
