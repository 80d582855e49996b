"""Vault custody as a user runs it (docs/vault.md): a real ``trustmesh-ca run`` whose CAs are signed by
Vault's PKI engine (``vault-pki``) and whose keys live in Vault's transit engine (``vault-transit``),
against the in-test Vault-API server (no Vault can be installed on these machines). openssl judges the
chains; afterwards no byte of any CA private key may be found outside "Vault"."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.test_ca_cli import RunningCa, start, write_config
from tests.support.processes import command, free_port, run
from tests.support.vault_server import FakeVault, write_secret

pytestmark = pytest.mark.e2e

running_ca = contextlib.contextmanager(start)


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    with FakeVault().running() as server:
        yield server


def vault_config(vault: FakeVault, tmp_path: Path) -> tuple[Path, int]:
    """A CA config in Vault custody (token auth from a file); returns it and its health port."""
    token_file = write_secret(tmp_path / "vault-token", vault.add_token("trustmesh"))
    port = free_port()
    sections = f"""
[ca.upstream]
kind = "vault-pki"
[ca.key_manager]
kind = "vault-transit"
[vault]
address = "{vault.address}"
token_file = "{token_file}"
timeout = "5s"
"""
    return write_config(tmp_path, port, sections), port


def mint_and_verify(ca: RunningCa, out: Path) -> x509.Certificate:
    """Mint an X509-SVID with the CLI and have openssl verify its chain to the bundle; returns the
    intermediate (the trustmesh CA) it chains through."""
    code, _, stderr = ca.cli("x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--out", str(out))
    assert code == 0, stderr
    svid = out / "svid.pem"
    verified = run(["openssl", "verify", "-CAfile", str(out / "bundle.pem"), "-untrusted", str(svid), str(svid)])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    _leaf, intermediate = x509.load_pem_x509_certificates(svid.read_bytes())
    return intermediate


def files_holding(directory: Path, secrets: dict[str, list[bytes]]) -> list[str]:
    """``<file>: <transit key>`` for every file under ``directory`` holding any of a key's secrets."""
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()):
        content = path.read_bytes()
        found += [f"{path}: {name}" for name, values in secrets.items() if any(v in content for v in values)]
    return found


def test_a_ca_in_vault_custody_chains_to_vaults_root_rotates_and_never_holds_a_private_key(
    vault: FakeVault, tmp_path: Path
) -> None:
    config, port = vault_config(vault, tmp_path)
    with running_ca(config, tmp_path, port) as ca:
        first = mint_and_verify(ca, tmp_path / "web-1")
        bundle = (tmp_path / "web-1" / "bundle.pem").read_bytes()
        code, _, stderr = ca.cli("authority", "rotate", "--now")
        assert code == 0, stderr
        second = mint_and_verify(ca, tmp_path / "web-2")
        code, crls, stderr = ca.cli("crl", "show", "--json")
        assert code == 0, stderr

    assert bundle == vault.root.public_bytes(serialization.Encoding.PEM)
    assert second != first
    assert {first.serial_number, second.serial_number} <= set(vault.issued.certificates)
    issuers = [x509.load_pem_x509_crl(c["pem"].encode()).issuer for c in json.loads(crls)]
    assert vault.root.subject in issuers  # Vault's CRL is published as the root's
    secrets = vault.private_key_material()
    assert len(secrets) >= 3  # the first X.509 CA, its successor and the JWT key
    assert files_holding(tmp_path, secrets) == []
    assert not (tmp_path / "ca-data" / "keys").exists()
    assert not (tmp_path / "ca-data" / "kek").exists()


def test_a_ca_started_while_vault_is_sealed_says_so_in_one_line_and_serves_once_unsealed(
    vault: FakeVault, tmp_path: Path
) -> None:
    config, port = vault_config(vault, tmp_path)
    sealed = f"vault-transit key manager: Vault at {vault.address} is sealed; unseal it ('vault operator unseal')"
    vault.sealed = True

    refused = run([command("trustmesh-ca"), "--config", str(config), "run"], timeout=30)

    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == f"trustmesh-ca: error: {sealed}"
    vault.sealed = False
    with running_ca(config, tmp_path, port) as ca:  # ready: it minted its authorities and serving SVID in Vault
        vault.sealed = True
        code, _, stderr = ca.cli("x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--out", str(tmp_path))
        assert (code, stderr.strip()) == (1, f"trustmesh-ca: error: {sealed}")
        vault.sealed = False
        mint_and_verify(ca, tmp_path / "after")
