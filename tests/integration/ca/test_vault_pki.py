"""The ``vault-pki`` upstream (DESIGN §3 "Upstream authority", docs/vault.md): trustmesh CAs are
intermediates from Vault's ``sign-intermediate``, checked before use, and Vault's CRL serves as the
root's CRL, so every CA on a chain has one (Envoy's rule, DESIGN §8) — against the in-test Vault-API
server, alone and under a real authority manager with openssl judging the chains."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.audit import Issuance
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.crl import RevokedSerial
from ca.issuance import IssuedX509Svid, X509SvidRequest
from ca.keys.vault_transit import VaultTransitKeyManager
from ca.store import Database
from ca.store.records import AuthorityKind
from ca.upstream.base import CaSubject
from ca.upstream.vault_pki import VaultPkiUpstream
from ca.vault import VaultClient
from spiffe_core.clock import SystemClock
from spiffe_core.errors import FailedPrecondition, UpstreamUnavailable
from spiffe_core.keys import KeyType, PrivateKey
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.enterprise_pki import ca_use_cases
from tests.support.store import OFFICER
from tests.support.vault_server import FakeVault, token_config

TD = TrustDomain("example.org")
CA_TTL = timedelta(days=7)
HINT = timedelta(minutes=1)
USER = "vault-pki upstream"


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    with FakeVault().running() as server:
        yield server


def upstream_of(vault: FakeVault, directory: Path) -> VaultPkiUpstream:
    return VaultPkiUpstream(VaultClient(token_config(vault, directory), USER, "ca.upstream.pki_mount"), "pki")


@pytest.fixture
def upstream(vault: FakeVault, tmp_path: Path) -> VaultPkiUpstream:
    return upstream_of(vault, tmp_path)


def mint(upstream: VaultPkiUpstream, key: PrivateKey, ttl: timedelta = CA_TTL) -> tuple[x509.Certificate, ...]:
    now = datetime.now(UTC)
    cert, chain = upstream.mint_x509_ca(
        private_key=key,
        trust_domain=TD,
        subject=CaSubject().name_for(TD, "authority-1"),
        not_before=now - timedelta(minutes=1),
        not_after=now + ttl,
    )
    return cert, *chain


def test_vault_signs_an_intermediate_for_our_key_under_its_root(upstream: VaultPkiUpstream, vault: FakeVault) -> None:
    key = ec.generate_private_key(ec.SECP256R1())

    cert, *chain = mint(upstream, key)

    assert chain == [vault.root]
    assert cert.public_key() == key.public_key()
    assert cert.subject == CaSubject().name_for(TD, "authority-1")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    cert.verify_directly_issued_by(vault.root)  # raises unless the root signed it


def test_a_transit_key_can_be_certified_by_vault_pki(vault: FakeVault, tmp_path: Path) -> None:
    client = VaultClient(token_config(vault, tmp_path), "vault-transit key manager", "ca.key_manager.transit_mount")
    key = VaultTransitKeyManager(client, "transit", "trustmesh-").generate("x509-1", KeyType.EC_P256)

    cert, _ = mint(upstream_of(vault, tmp_path), key)

    assert cert.public_key() == key.public_key()


def test_the_intermediate_ends_when_asked_or_with_the_root(tmp_path: Path) -> None:
    with FakeVault(root_lifetime=timedelta(days=2)).running() as vault:
        upstream = upstream_of(vault, tmp_path)
        short, _ = mint(upstream, ec.generate_private_key(ec.SECP256R1()), timedelta(hours=6))
        capped, _ = mint(upstream, ec.generate_private_key(ec.SECP256R1()), timedelta(days=7))

    assert abs(short.not_valid_after_utc - (datetime.now(UTC) + timedelta(hours=6))) < timedelta(minutes=1)
    assert capped.not_valid_after_utc == vault.root.not_valid_after_utc.replace(microsecond=0)


def test_an_expired_vault_root_refuses_to_mint_with_the_reason(tmp_path: Path) -> None:
    with (
        FakeVault(root_lifetime=timedelta(minutes=-2)).running() as vault,
        pytest.raises(UpstreamUnavailable) as caught,
    ):
        mint(upstream_of(vault, tmp_path), ec.generate_private_key(ec.SECP256R1()))

    assert str(caught.value).startswith(
        f"{USER}: Vault at {vault.address}: the CA of pki (CN=Fake Vault Root CA) expired at "
    )


def test_a_certificate_for_another_key_is_refused(upstream: VaultPkiUpstream, vault: FakeVault) -> None:
    vault.issue_for_key = ec.generate_private_key(ec.SECP256R1()).public_key()

    with pytest.raises(FailedPrecondition) as caught:
        mint(upstream, ec.generate_private_key(ec.SECP256R1()))

    assert str(caught.value) == (
        f"{USER}: Vault at {vault.address} returned a certificate for another public key from "
        "pki/root/sign-intermediate; refusing it"
    )


def test_a_certificate_that_is_no_ca_is_refused(upstream: VaultPkiUpstream, vault: FakeVault) -> None:
    vault.issue_as_ca = False

    with pytest.raises(FailedPrecondition) as caught:
        mint(upstream, ec.generate_private_key(ec.SECP256R1()))

    assert str(caught.value).startswith(
        f"{USER}: Vault at {vault.address} returned a certificate that is no CA certificate ("
    )
    assert "cA=true" in str(caught.value)


def revoked_entry(serial: int) -> RevokedSerial:
    return RevokedSerial(serial, datetime.now(UTC), x509.ReasonFlags.ca_compromise)


def root_crl(
    upstream: VaultPkiUpstream, vault: FakeVault, revoked: list[RevokedSerial]
) -> x509.CertificateRevocationList:
    now = datetime.now(UTC)
    crl = upstream.root_crl(vault.root, revoked, now, now + timedelta(hours=24), 1)
    assert crl is not None
    return crl


def test_the_root_crl_is_vaults_and_lists_revoked_trustmesh_cas_after_revoking_them(
    upstream: VaultPkiUpstream, vault: FakeVault
) -> None:
    cert, _ = mint(upstream, ec.generate_private_key(ec.SECP256R1()))

    crl = root_crl(upstream, vault, [revoked_entry(cert.serial_number)])
    again = root_crl(upstream, vault, [revoked_entry(cert.serial_number)])

    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.is_signature_valid(vault.root_key.public_key())
    assert again.public_bytes(serialization.Encoding.DER) == crl.public_bytes(serialization.Encoding.DER)
    assert vault.count("POST", "pki/revoke") == 1  # a serial Vault lists already is not revoked again


def test_a_vault_crl_that_would_expire_too_soon_is_rebuilt(tmp_path: Path) -> None:
    with FakeVault(crl_expiry=timedelta(hours=1)).running() as vault:  # the CRL Vault built at start: 1 h
        upstream = upstream_of(vault, tmp_path)
        vault.crl_expiry = timedelta(hours=72)  # the mount's expiry now
        now = datetime.now(UTC)

        crl = upstream.root_crl(vault.root, [], now, now + timedelta(hours=24), 1)

    assert crl is not None
    assert crl.next_update_utc is not None
    assert crl.next_update_utc >= now + timedelta(hours=24)
    assert vault.count("GET", "pki/crl/rotate") == 1


def test_a_vault_crl_shorter_than_the_crl_ttl_is_refused_with_the_fix(tmp_path: Path) -> None:
    with FakeVault(crl_expiry=timedelta(hours=1)).running() as vault:
        upstream = upstream_of(vault, tmp_path)
        now = datetime.now(UTC)

        with pytest.raises(FailedPrecondition) as caught:
            upstream.root_crl(vault.root, [], now, now + timedelta(hours=24), 1)

    assert str(caught.value).startswith(f"{USER}: Vault at {vault.address} issues CRLs of pki that expire sooner ")
    assert str(caught.value).endswith(
        "raise the mount's CRL expiry ('vault write pki/config/crl expiry=72h') or lower revocation.crl_ttl"
    )
    assert vault.count("GET", "pki/crl/rotate") == 1


def test_no_root_crl_for_a_root_that_is_not_the_mounts_ca(upstream: VaultPkiUpstream, vault: FakeVault) -> None:
    now = datetime.now(UTC)
    other = FakeVault().root

    assert upstream.root_crl(other, [], now, now + timedelta(hours=24), 1) is None


class VaultCa:
    """A CA as ca.server wires it over Vault: transit keys, vault-pki upstream, SQLite datastore."""

    def __init__(self, vault: FakeVault, directory: Path) -> None:
        config = token_config(vault, directory)
        database = Database.open(f"sqlite:///{directory / 'ca.sqlite3'}")
        database.migrate()
        clock = SystemClock()
        keys = VaultTransitKeyManager(
            VaultClient(config, "vault-transit key manager", "ca.key_manager.transit_mount"), "transit", "trustmesh-"
        )
        upstream = VaultPkiUpstream(VaultClient(config, USER, "ca.upstream.pki_mount"), "pki")
        self.authorities = AuthorityManager(
            database, keys, upstream, AuthorityParams(TD, KeyType.EC_P256, KeyType.EC_P256, CA_TTL, HINT), clock
        )
        self.authorities.load()
        cases = ca_use_cases(database, self.authorities, clock, timedelta(hours=1))
        self.ops, self.rotator, self.service, self.directory = cases.officer, cases.rotator, cases.service, directory

    def mint(self) -> IssuedX509Svid:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        request = X509SvidRequest(
            csr.public_bytes(serialization.Encoding.DER), SpiffeId.parse("spiffe://example.org/web")
        )
        (svid,) = self.service.mint_x509_svids([request], Issuance(OFFICER))
        return svid

    def openssl_verify(
        self, cert: x509.Certificate, untrusted: tuple[x509.Certificate, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``openssl verify -crl_check_all`` of ``cert`` against the bundle and the published CRLs (Envoy's
        rule: every CA on the chain needs its current CRL)."""
        current = self.authorities.get_current()
        files = {
            "bundle.pem": current.bundle.x509_authorities_pem(),
            "chain.pem": b"".join(c.public_bytes(serialization.Encoding.PEM) for c in untrusted),
            "cert.pem": cert.public_bytes(serialization.Encoding.PEM),
            "crls.pem": b"".join(
                x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM) for der in current.crls
            ),
        }
        for name, content in files.items():
            (self.directory / name).write_bytes(content)
        d = self.directory
        chain = ("-untrusted", str(d / "chain.pem")) if untrusted else ()
        return subprocess.run(
            [
                *("openssl", "verify", "-crl_check_all", "-CAfile", str(d / "bundle.pem"), *chain),
                *("-CRLfile", str(d / "crls.pem"), str(d / "cert.pem")),
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    def openssl_verify_svid(self, svid: IssuedX509Svid) -> subprocess.CompletedProcess[str]:
        return self.openssl_verify(svid.leaf, svid.cert_chain[1:])


def test_a_ca_over_vault_publishes_vaults_root_and_a_crl_for_every_ca_on_the_chain(
    vault: FakeVault, tmp_path: Path
) -> None:
    ca = VaultCa(vault, tmp_path)

    verified = ca.openssl_verify_svid(ca.mint())

    assert ca.authorities.get_current().bundle.x509_authorities == (vault.root,)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_revoked_trustmesh_ca_is_on_vaults_crl_which_the_ca_publishes_as_the_roots(
    vault: FakeVault, tmp_path: Path
) -> None:
    ca = VaultCa(vault, tmp_path)
    old = ca.authorities.get_current().active_x509()
    ca.ops.rotate_now(AuthorityKind.X509, OFFICER)

    ca.ops.revoke(old.id, OFFICER)
    verified = ca.openssl_verify(old.certificate)

    assert old.certificate.serial_number in vault.issued.revoked
    assert verified.returncode != 0
    assert "certificate revoked" in verified.stdout + verified.stderr
    assert ca.openssl_verify_svid(ca.mint()).returncode == 0  # the new authority's chains still verify


def test_a_vault_crl_that_cannot_last_a_crl_ttl_means_no_crls_with_vaults_reason(tmp_path: Path) -> None:
    with FakeVault(crl_expiry=timedelta(hours=1)).running() as vault:
        ca = VaultCa(vault, tmp_path)

    assert ca.authorities.get_current().crls == ()
    warning = ca.authorities.crl_warning or ""
    assert warning.startswith(f"publishing no CRLs: {USER}: Vault at {vault.address} issues CRLs of pki that expire ")


def test_a_ca_revocation_while_vault_is_sealed_is_published_once_vault_is_back(
    vault: FakeVault, tmp_path: Path
) -> None:
    ca = VaultCa(vault, tmp_path)
    old = ca.authorities.get_current().active_x509()
    ca.ops.rotate_now(AuthorityKind.X509, OFFICER)
    vault.sealed = True

    with pytest.raises(UpstreamUnavailable, match="is sealed; unseal it"):
        ca.ops.revoke(old.id, OFFICER)  # committed; the root's CRL cannot be had
    published_while_sealed = {a.id for a in ca.authorities.get_current().x509}
    vault.sealed = False
    ca.rotator.tick()

    assert old.id in published_while_sealed
    assert old.id not in {a.id for a in ca.authorities.get_current().x509}
    assert old.certificate.serial_number in vault.issued.revoked
    assert ca.openssl_verify(old.certificate).returncode != 0
