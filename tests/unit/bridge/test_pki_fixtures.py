"""pki-fixtures/: the enterprise PKI the bridge's tests and demos use is what its README says it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.enterprise_pki import EnterprisePki

REPO = Path(__file__).resolve().parents[3]


def _openssl_verify(pki: EnterprisePki, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.root), *args], capture_output=True, text=True, check=False
    )


def test_generate_script_writes_the_pki_by_hand_with_private_keys_0600(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    subprocess.run([sys.executable, str(REPO / "pki-fixtures" / "generate.py"), str(out)], check=True, cwd=tmp_path)
    names = {path.name for path in out.iterdir()}
    assert {"root.pem", "intermediate.pem", "web01-chain.pem", "db01.key", "enterprise-crl.pem"} <= names
    assert all((path.stat().st_mode & 0o777) == 0o600 for path in out.glob("*.key"))


def test_host_certs_verify_to_the_enterprise_root(enterprise_pki: EnterprisePki) -> None:
    for host in (enterprise_pki.web, enterprise_pki.db):
        result = _openssl_verify(enterprise_pki, "-untrusted", str(host.chain), str(host.cert))
        assert result.returncode == 0, result.stderr


def test_bad_certs_fail_openssl_for_the_reason_their_name_says(enterprise_pki: EnterprisePki) -> None:
    pki = enterprise_pki
    expired = _openssl_verify(pki, "-untrusted", str(pki.expired.chain), str(pki.expired.cert))
    revoked = _openssl_verify(
        pki, "-crl_check", "-CRLfile", str(pki.crl), "-untrusted", str(pki.revoked.chain), str(pki.revoked.cert)
    )
    untrusted = _openssl_verify(pki, "-untrusted", str(pki.untrusted.chain), str(pki.untrusted.cert))
    assert "certificate has expired" in expired.stdout + expired.stderr
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    assert "unable to get local issuer certificate" in untrusted.stdout + untrusted.stderr


def test_long_chain_presents_four_intermediates(enterprise_pki: EnterprisePki) -> None:
    chain = enterprise_pki.long_chain.chain.read_text()
    assert chain.count("BEGIN CERTIFICATE") == 1 + enterprise_pki.long_chain_intermediates
