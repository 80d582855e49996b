"""Test material for upstream authorities: an enterprise root on disk, as ``ca.upstream.kind = "disk"``
reads it, and the CA use cases wired over an authority manager the way ``ca.server`` wires them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.authority_changes import AuthorityChanges
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.authority_ops import AuthorityOperations
from ca.issuance import TtlPolicy
from ca.keys.memory import MemoryKeyManager
from ca.metrics import CaMetrics
from ca.rotation import RotationParams
from ca.rotator import Rotator
from ca.service import CaService
from ca.store import Database
from ca.sync import ChangeHub
from ca.upstream import SelfSignedUpstream
from spiffe_core.clock import Clock
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import TrustDomain


def self_signed_root(key: ec.EllipticCurvePrivateKey, name: str, lifetime: timedelta) -> x509.Certificate:
    """A self-signed CA certificate named ``name`` for ``key``, valid from 5 minutes ago for ``lifetime``
    from now, around the real clock (openssl checks it)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def write_enterprise_root(directory: Path, name: str, lifetime: timedelta) -> x509.Certificate:
    """Write ``root.pem`` and ``root.key`` (0600) of a :func:`self_signed_root`."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_root(key, name, lifetime)
    (directory / "root.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "root.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "root.key").chmod(0o600)
    return cert


@dataclass(frozen=True, slots=True)
class CaUseCases:
    officer: AuthorityOperations
    rotator: Rotator
    service: CaService


def memory_authorities(
    database: Database, clock: Clock, ca_ttl: timedelta, refresh_hint: timedelta = timedelta(minutes=5)
) -> AuthorityManager:
    """Self-signed EC P-256 authorities of example.org with keys in memory, loaded (first authorities
    created), as most CA tests want them."""
    manager = AuthorityManager(
        database,
        MemoryKeyManager(),
        SelfSignedUpstream(),
        AuthorityParams(TrustDomain("example.org"), KeyType.EC_P256, KeyType.EC_P256, ca_ttl, refresh_hint),
        clock,
    )
    manager.load()
    return manager


def ca_use_cases(database: Database, manager: AuthorityManager, clock: Clock, svid_ttl: timedelta) -> CaUseCases:
    """The officer operations, the rotation task and the issuing service over ``manager`` (loaded),
    wired as ``ca.server`` wires them, with SVIDs of ``svid_ttl``."""
    changes = AuthorityChanges(database=database, authorities=manager, hub=ChangeHub(), clock=clock)
    params = RotationParams(manager.params.refresh_hint, svid_ttl)
    service = CaService(
        database=database,
        authorities=manager,
        x509_ttl=TtlPolicy(svid_ttl, svid_ttl),
        jwt_ttl=TtlPolicy(svid_ttl, svid_ttl),
        clock=clock,
        metrics=CaMetrics(),
    )
    return CaUseCases(AuthorityOperations(changes, params, clock), Rotator(changes, params, clock), service)
