"""``trustmesh-bridge exchange`` checks everything local before it calls the CA: a key that is not the
certificate's, a bundle that names no trust domain, a password file that is empty or has no --p12
are one-line errors, and nothing is written. (The exchange itself: tests/e2e/test_bridge_exchange.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from bridge.cli import main
from bridge.cli_exchange import trust_domain_of
from spiffe_core.spiffe_id import TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.enterprise_pki import EnterprisePki

CA = SigningCa.create(TrustDomain("example.org"), datetime.now(UTC))


@pytest.fixture
def mesh_bundle(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.pem"
    path.write_bytes(CA.cert.public_bytes(serialization.Encoding.PEM))
    return path


def exchange(capsys: pytest.CaptureFixture[str], bundle: Path, cert: Path, key: Path, out: Path, *extra: str) -> str:
    """Run the command (it must fail before it dials the CA); return its one line of error."""
    argv = ["exchange", "--server", "127.0.0.1:9", "--bundle", str(bundle), "--cert", str(cert), "--key", str(key)]
    assert main([*argv, "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert not out.exists()
    return err.removeprefix("trustmesh-bridge: error: ").strip()


def test_a_key_that_is_not_the_certificates_is_refused(
    capsys: pytest.CaptureFixture[str], enterprise_pki: EnterprisePki, mesh_bundle: Path, tmp_path: Path
) -> None:
    web, db = enterprise_pki.web, enterprise_pki.db

    error = exchange(capsys, mesh_bundle, web.chain, db.key, tmp_path / "out")

    assert error == f"--key {db.key} is not the key of the certificate in --cert {web.chain}"


def test_a_bundle_that_names_no_trust_domain_asks_for_one(
    capsys: pytest.CaptureFixture[str], enterprise_pki: EnterprisePki, tmp_path: Path
) -> None:
    web = enterprise_pki.web

    error = exchange(capsys, enterprise_pki.root, web.chain, web.key, tmp_path / "out")

    assert error == (
        f"--bundle {enterprise_pki.root}: its roots name no trust domain; pass --trust-domain with the CA's "
        "trust domain"
    )


def test_the_trust_domain_is_the_one_the_cas_roots_name() -> None:
    assert trust_domain_of([CA.cert], "mesh.pem") == TrustDomain("example.org")


@pytest.mark.parametrize(
    ("content", "extra", "problem"),
    [
        pytest.param("\n", ["--p12"], "is empty; put the password in it", id="empty"),
        pytest.param("secret\n", [], "--p12-password-file is for --p12", id="without-p12"),
    ],
)
def test_a_password_file_that_cannot_be_used_is_refused(
    capsys: pytest.CaptureFixture[str],
    enterprise_pki: EnterprisePki,
    mesh_bundle: Path,
    tmp_path: Path,
    content: str,
    extra: list[str],
    problem: str,
) -> None:
    password = tmp_path / "password"
    password.write_text(content)
    web = enterprise_pki.web

    error = exchange(
        capsys, mesh_bundle, web.chain, web.key, tmp_path / "out", "--p12-password-file", str(password), *extra
    )

    assert problem in error
