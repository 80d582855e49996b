"""Rotation under a ``disk`` upstream (an enterprise root on disk) on a real datastore: every rotation
gets a new intermediate from the upstream; replacing the root files publishes both roots until the old
one signs nothing alive, then prunes it; and the published CRL set covers every CA on every chain, as
``openssl verify -crl_check_all`` demands (Envoy's rule)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.audit import Issuance
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.authority_ops import AuthorityOperations
from ca.issuance import IssuedX509Svid, X509SvidRequest
from ca.keys.memory import MemoryKeyManager
from ca.rotation import PUBLISH_HINTS
from ca.rotator import Rotator
from ca.service import CaService
from ca.store import Database
from ca.store.records import AuthorityKind
from ca.upstream.disk import WatchedDiskUpstream
from spiffe_core.errors import UpstreamUnavailable
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.clock import FakeClock
from tests.support.enterprise_pki import ca_use_cases, write_enterprise_root
from tests.support.store import OFFICER, TESTER

TD = TrustDomain("example.org")
CA_TTL = timedelta(hours=6)
SVID_TTL = timedelta(hours=1)
HINT = timedelta(minutes=1)
WEB = SpiffeId.parse("spiffe://example.org/web")
ROOT_LIFETIME = timedelta(days=30)


@dataclass
class DiskCa:
    clock: FakeClock
    authorities: AuthorityManager
    ops: AuthorityOperations
    rotator: Rotator
    service: CaService
    directory: Path

    def mint(self) -> IssuedX509Svid:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        (svid,) = self.service.mint_x509_svids(
            [X509SvidRequest(csr.public_bytes(serialization.Encoding.DER), WEB)], Issuance(TESTER)
        )
        return svid

    def rotate(self) -> str:
        """Prepare and activate the next X.509 authority as an officer would; returns its ID."""
        new_id = self.ops.prepare(AuthorityKind.X509, OFFICER).changes[0].authority_id
        self.clock.advance(HINT * PUBLISH_HINTS)
        self.ops.activate(new_id, OFFICER)
        return new_id

    def roots(self) -> set[str]:
        return {c.subject.rfc4514_string() for c in self.authorities.get_current().bundle.x509_authorities}

    def openssl_verify(self, svid: IssuedX509Svid) -> subprocess.CompletedProcess[str]:
        """``openssl verify -crl_check_all`` of an SVID against the bundle and the published CRLs."""
        current = self.authorities.get_current()
        files = {
            "bundle.pem": current.bundle.x509_authorities_pem(),
            "chain.pem": b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain[1:]),
            "leaf.pem": svid.leaf.public_bytes(serialization.Encoding.PEM),
            "crls.pem": b"".join(
                x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM) for der in current.crls
            ),
        }
        for name, content in files.items():
            (self.directory / name).write_bytes(content)
        d = self.directory
        at = str(int(self.clock.now().timestamp()))  # the CA's (hand-moved) clock, not the real one
        return subprocess.run(
            [
                *("openssl", "verify", "-attime", at, "-crl_check_all", "-CAfile", str(d / "bundle.pem")),
                *("-untrusted", str(d / "chain.pem"), "-CRLfile", str(d / "crls.pem"), str(d / "leaf.pem")),
            ],
            capture_output=True,
            text=True,
            check=False,
        )


@pytest.fixture
def disk_ca(database: Database, tmp_path: Path) -> DiskCa:
    write_enterprise_root(tmp_path, "enterprise root 1", ROOT_LIFETIME)
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    manager = AuthorityManager(
        database,
        MemoryKeyManager(),
        WatchedDiskUpstream(tmp_path / "root.pem", tmp_path / "root.key", None),
        AuthorityParams(TD, KeyType.EC_P256, KeyType.EC_P256, CA_TTL, HINT),
        clock,
    )
    manager.load()
    cases = ca_use_cases(database, manager, clock, SVID_TTL)
    return DiskCa(clock, manager, cases.officer, cases.rotator, cases.service, tmp_path)


def test_each_rotation_gets_a_new_intermediate_under_the_same_root(disk_ca: DiskCa) -> None:
    first = disk_ca.authorities.get_current().active_x509()
    disk_ca.rotate()
    second = disk_ca.authorities.get_current().active_x509()
    assert second.id != first.id
    assert second.certificate != first.certificate
    assert second.root == first.root
    assert disk_ca.roots() == {"CN=enterprise root 1"}


def test_the_crl_set_covers_every_ca_on_the_chain_as_openssl_demands(disk_ca: DiskCa) -> None:
    svid = disk_ca.mint()
    result = disk_ca.openssl_verify(svid)
    assert result.returncode == 0, result.stdout + result.stderr
    disk_ca.ops.revoke_svids(OFFICER, serial=svid.serial)
    result = disk_ca.openssl_verify(svid)
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr


def test_a_replaced_root_is_published_beside_the_old_one_until_the_old_signs_nothing_alive(disk_ca: DiskCa) -> None:
    old_svid = disk_ca.mint()
    write_enterprise_root(disk_ca.directory, "enterprise root 2", ROOT_LIFETIME)
    disk_ca.rotate()
    assert disk_ca.roots() == {"CN=enterprise root 1", "CN=enterprise root 2"}
    new_svid = disk_ca.mint()
    for svid in (old_svid, new_svid):  # both chains verify, CRLs for every CA included
        result = disk_ca.openssl_verify(svid)
        assert result.returncode == 0, result.stdout + result.stderr
    disk_ca.clock.advance(SVID_TTL + HINT)  # everything the old intermediate signed has expired
    disk_ca.rotator.tick()
    assert disk_ca.roots() == {"CN=enterprise root 2"}


def test_an_expired_upstream_root_refuses_to_mint_with_the_reason(tmp_path: Path) -> None:
    root = write_enterprise_root(tmp_path, "expired enterprise root", timedelta(seconds=-120))
    upstream = WatchedDiskUpstream(tmp_path / "root.pem", tmp_path / "root.key", None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    with pytest.raises(UpstreamUnavailable, match="expired at"):
        upstream.mint_x509_ca(
            private_key=key,
            trust_domain=TD,
            subject=x509.Name([]),
            not_before=now - timedelta(minutes=1),
            not_after=now + CA_TTL,
        )
    assert root.not_valid_after_utc < now
