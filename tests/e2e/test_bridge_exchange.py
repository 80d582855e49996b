"""The agentless exchange (issue 10): a legacy service without an agent runs ``trustmesh-bridge exchange``
against a real ``trustmesh-ca run`` and gets an X509-SVID of its mapped SPIFFE ID that keeps its DNS SAN
and CN, as PEM files and PKCS#12 that openssl opens; an old client verifies it by DNS name against the
exported mesh bundle; expired, revoked, untrusted-CA and over-long chains are refused saying which,
and write nothing; the exchange is in the audit log. One CA for the module (starting one costs)."""

from __future__ import annotations

import json
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.enterprise_pki import REFUSED_HOSTS, EnterprisePki, HostFiles
from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import command, free_port, run, wait_until

pytestmark = pytest.mark.e2e

WEB_ID = f"spiffe://{TRUST_DOMAIN}/legacy/payments/web01"
WEB_DNS = "web01.payments.corp.example.com"
TIMEOUT = 5.0


@dataclass(frozen=True)
class ExchangeCa:
    mesh: Mesh
    address: str
    bundle: Path

    def exchange(self, host: HostFiles, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(
            [command("trustmesh-bridge"), "exchange", "--server", self.address, "--bundle", str(self.bundle),
             "--cert", str(host.chain), "--key", str(host.key), "--out", str(out), *extra]
        )  # fmt: skip


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory, enterprise_pki: EnterprisePki) -> Iterator[ExchangeCa]:
    """A CA trusting the enterprise root and CRL, serving the exchange, with one rule for the payments hosts."""
    mesh = Mesh(tmp_path_factory.mktemp("exchange"))
    port = free_port()
    mesh.write_ca_config(
        f'[bridge]\ntrust_anchors = {{ corp = "{enterprise_pki.root}" }}\ncrls = ["{enterprise_pki.crl}"]\n'
        f'exchange_address = "127.0.0.1:{port}"\n'
    )
    with mesh.running_ca():
        mesh.ca("mapping", "add", "--name", "payments", "--dns", "*.payments.corp.example.com", "--spiffe-id",
                "/legacy/payments/{host}")  # fmt: skip
        bundle = mesh.root / "mesh-bundle.pem"
        bundle.write_text(mesh.ca("bundle", "show", "--format", "pem"))
        wait_until(lambda: listening(port), 10, "the exchange listener")
        yield ExchangeCa(mesh, f"127.0.0.1:{port}", bundle)


@pytest.fixture(scope="module")
def exchanged(ca: ExchangeCa, enterprise_pki: EnterprisePki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of one exchange of web01's certificate, with --p12 and no password."""
    out = tmp_path_factory.mktemp("web01") / "svid"
    result = ca.exchange(enterprise_pki.web, out, "--p12")
    assert result.returncode == 0, result.stderr
    assert "svid.p12 has an empty password and is not encrypted" in result.stderr
    return out


def test_the_exchange_writes_an_svid_with_the_mapped_id_its_dns_san_and_cn(ca: ExchangeCa, exchanged: Path) -> None:
    assert sorted(p.name for p in exchanged.iterdir()) == ["bundle.pem", "svid.p12", "svid.pem", "svid_key.pem"]
    assert stat.S_IMODE((exchanged / "svid_key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((exchanged / "svid.p12").stat().st_mode) == 0o600
    leaf = run(["openssl", "x509", "-in", str(exchanged / "svid.pem"), "-noout", "-subject", "-ext", "subjectAltName"])
    assert f"CN = {WEB_DNS}" in leaf.stdout
    assert f"URI:{WEB_ID}, DNS:{WEB_DNS}" in leaf.stdout
    verify = run(["openssl", "verify", "-CAfile", str(ca.bundle), str(exchanged / "svid.pem")])
    assert verify.returncode == 0, verify.stderr


def test_the_pkcs12_opens_with_openssl_with_an_empty_password_or_the_given_one(
    ca: ExchangeCa, exchanged: Path, enterprise_pki: EnterprisePki, tmp_path: Path
) -> None:
    unencrypted = run(["openssl", "pkcs12", "-in", str(exchanged / "svid.p12"), "-passin", "pass:", "-nokeys"])
    password = tmp_path / "p12-password"
    password.write_text("correct horse\n")
    result = ca.exchange(enterprise_pki.web, tmp_path / "out", "--p12", "--p12-password-file", str(password))
    encrypted = tmp_path / "out" / "svid.p12"
    opened = run(["openssl", "pkcs12", "-in", str(encrypted), "-passin", f"file:{password}", "-nodes"])
    unopened = run(["openssl", "pkcs12", "-in", str(encrypted), "-passin", "pass:", "-nokeys"])

    assert unencrypted.returncode == 0, unencrypted.stderr
    assert "BEGIN CERTIFICATE" in unencrypted.stdout
    assert result.returncode == 0, result.stderr
    assert opened.returncode == 0, opened.stderr
    assert "BEGIN PRIVATE KEY" in opened.stdout
    assert unopened.returncode != 0


def serve_once(exchanged: Path, ready: threading.Event, port: list[int]) -> None:
    """A legacy TLS server presenting the exchanged SVID to one client, then gone."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(exchanged / "svid.pem", exchanged / "svid_key.pem")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port.append(listener.getsockname()[1])
        ready.set()
        for _ in range(2):  # the client that verifies the name, then the one that asks for another
            try:
                conn, _ = listener.accept()
                conn.settimeout(TIMEOUT)
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello from a legacy service\n")
            except (OSError, ssl.SSLError):
                continue


def old_client(port: int, bundle: Path, name: str) -> bytes:
    """What an old client does: trust the CA file, check the server's DNS name."""
    context = ssl.create_default_context(cafile=str(bundle))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
        context.wrap_socket(sock, server_hostname=name) as tls,
    ):
        return tls.recv(100)


def test_an_old_client_trusting_the_mesh_bundle_verifies_the_svid_by_dns_name(ca: ExchangeCa, exchanged: Path) -> None:
    ready, port = threading.Event(), []
    server = threading.Thread(target=serve_once, args=(exchanged, ready, port), daemon=True)
    server.start()
    assert ready.wait(TIMEOUT)

    greeting = old_client(port[0], ca.bundle, WEB_DNS)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        old_client(port[0], ca.bundle, "db01.data.corp.example.com")
    server.join(TIMEOUT)

    assert greeting == b"hello from a legacy service\n"


@pytest.mark.parametrize(("host", "reason"), REFUSED_HOSTS)
def test_a_refused_certificate_says_why_and_writes_nothing(
    ca: ExchangeCa, enterprise_pki: EnterprisePki, tmp_path: Path, host: str, reason: str
) -> None:
    result = ca.exchange(getattr(enterprise_pki, host), tmp_path / "out")

    assert result.returncode == 1
    assert result.stderr.startswith(f"trustmesh-bridge: error: the CA refused the exchange: {reason}: ")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_exchange_is_in_the_audit_log_with_the_enterprise_certificate(ca: ExchangeCa, exchanged: Path) -> None:
    serial = run(["openssl", "x509", "-in", str(exchanged / "svid.pem"), "-noout", "-serial"]).stdout
    records = json.loads(ca.mesh.ca("audit", "list", "--action", "x509_svid.exchange", "--outcome", "ok", "--json"))

    mine = [r for r in records if r["detail"]["serial"] == serial.strip().removeprefix("serial=").lower().lstrip("0")]
    assert len(mine) == 1
    assert (mine[0]["target"], mine[0]["auth_method"], mine[0]["detail"]["rule"]) == (
        WEB_ID,
        "enterprise-cert",
        "payments",
    )
    assert mine[0]["actor"].startswith("x509:CN=Example Corp Issuing CA 1#")
