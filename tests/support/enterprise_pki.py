"""Enterprise PKI test material.

* For upstream authorities: an enterprise root on disk, as ``ca.upstream.kind = "disk"`` reads it, and
  the CA use cases wired over an authority manager the way ``ca.server`` wires them.
* For the legacy identity bridge (DESIGN §5, bridge/): :func:`generate_enterprise_pki` writes a realistic
  enterprise PKI — root, issuing intermediate, host certificates with DNS SANs and CNs (RSA and EC), an
  expired one, a revoked one with the issuing CA's CRL, one from an untrusted CA and one with a chain too
  long to accept. ``pki-fixtures/generate.py OUTDIR`` runs it by hand; the ``enterprise_pki`` fixture
  (tests/conftest.py) runs it once per test session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
    _write_pem(directory / "root.pem", cert)
    _write_key(directory / "root.key", key)
    return cert


IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
CA_KEY_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
HOST_KEY_USAGE = x509.KeyUsage(True, False, True, False, False, False, False, False, False)
# Enterprise host certificates are usually both: the host serves TLS and presents the same cert as a client.
HOST_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
ENTERPRISE_DOMAIN = "corp.example.com"


def _write_pem(path: Path, *certs: x509.Certificate) -> None:
    path.write_bytes(b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs))


def _write_key(path: Path, key: IssuerKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


@dataclass(frozen=True, slots=True)
class Issuer:
    """A CA certificate and its key."""

    cert: x509.Certificate
    key: IssuerKey


def issue_ca(parent: Issuer, name: str, lifetime: timedelta = timedelta(days=365)) -> Issuer:
    """An intermediate CA named ``name`` under ``parent`` (EC P-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(parent.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.cert.public_key()),
            critical=False,
        )
        .sign(parent.key, hashes.SHA256())
    )
    return Issuer(cert, key)


def issue_host(
    issuer: Issuer,
    common_name: str,
    dns_names: tuple[str, ...],
    *,
    key: IssuerKey | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[x509.Certificate, IssuerKey]:
    """A host certificate the way enterprise CAs issue them: CN and DNS SANs, server and client auth."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(HOST_KEY_USAGE, critical=True)
        .add_extension(HOST_EKU, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.cert.public_key()),
            critical=False,
        )
    )
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), False)
    return builder.sign(issuer.key, hashes.SHA256()), key


def enterprise_crl(
    issuer: Issuer, revoked_serials: tuple[int, ...], next_update: timedelta = timedelta(days=7)
) -> x509.CertificateRevocationList:
    """The CRL ``issuer`` publishes, listing ``revoked_serials``; fresh until ``next_update`` from now
    (a negative one makes a CRL past its next update)."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(min(now, now + next_update) - timedelta(minutes=5))
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - timedelta(minutes=1)).build()
        )
    return builder.sign(issuer.key, hashes.SHA256())


@dataclass(frozen=True, slots=True)
class HostFiles:
    """One host's files: ``cert`` (leaf only), ``chain`` (leaf then the intermediates up to, not
    including, the root) and ``key`` (PKCS#8, 0600)."""

    name: str
    dns_names: tuple[str, ...]
    cert: Path
    chain: Path
    key: Path


@dataclass(frozen=True, slots=True)
class EnterprisePki:
    """What :func:`generate_enterprise_pki` wrote into ``directory``."""

    directory: Path
    root: Path  # the enterprise trust anchor
    intermediate: Path
    crl: Path  # the issuing intermediate's CRL (PEM), listing ``revoked``
    untrusted_root: Path  # the CA ``untrusted`` chains to; no one trusts it
    web: HostFiles  # EC P-256
    db: HostFiles  # RSA 2048
    expired: HostFiles
    revoked: HostFiles
    untrusted: HostFiles
    long_chain: HostFiles  # four intermediates between it and the root
    long_chain_intermediates: int = 4


# The hosts of :class:`EnterprisePki` a verifier must refuse, and the reason its message starts with.
REFUSED_HOSTS = (
    ("expired", "expired"),
    ("revoked", "revoked"),
    ("untrusted", "untrusted CA"),
    ("long_chain", "chain too long"),
)


def _write_host(directory: Path, name: str, cert: x509.Certificate, key: IssuerKey, *chain: Issuer) -> HostFiles:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    files = HostFiles(
        name,
        tuple(san.get_values_for_type(x509.DNSName)),
        directory / f"{name}.pem",
        directory / f"{name}-chain.pem",
        directory / f"{name}.key",
    )
    _write_pem(files.cert, cert)
    _write_pem(files.chain, cert, *(issuer.cert for issuer in chain))
    _write_key(files.key, key)
    return files


def generate_enterprise_pki(directory: Path) -> EnterprisePki:
    """Write the enterprise PKI of Example Corp into ``directory`` (created if missing): see
    :class:`EnterprisePki` and pki-fixtures/README.md for what each file is for."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = Issuer(self_signed_root(root_key, "Example Corp Root CA", timedelta(days=3650)), root_key)
    issuing = issue_ca(root, "Example Corp Issuing CA 1")
    _write_pem(directory / "root.pem", root.cert)
    _write_key(directory / "root.key", root.key)
    _write_pem(directory / "intermediate.pem", issuing.cert)
    _write_key(directory / "intermediate.key", issuing.key)

    def host(*labels: str, **kwargs: Any) -> tuple[x509.Certificate, IssuerKey]:
        fqdns = tuple(f"{label}.{ENTERPRISE_DOMAIN}" for label in labels)
        return issue_host(issuing, fqdns[0], fqdns, **kwargs)

    web = _write_host(directory, "web01", *host("web01.payments", "web01"), issuing)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    db = _write_host(directory, "db01", *host("db01.data", key=rsa_key), issuing)
    now = datetime.now(UTC)
    expired = _write_host(
        directory,
        "expired",
        *host("old01.payments", not_before=now - timedelta(days=400), not_after=now - timedelta(days=1)),
        issuing,
    )
    revoked_cert, revoked_key = host("stolen01.payments")
    revoked = _write_host(directory, "revoked", revoked_cert, revoked_key, issuing)
    crl = directory / "enterprise-crl.pem"
    crl.write_bytes(enterprise_crl(issuing, (revoked_cert.serial_number,)).public_bytes(serialization.Encoding.PEM))

    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = Issuer(self_signed_root(rogue_key, "Example Corp Root CA", timedelta(days=3650)), rogue_key)
    _write_pem(directory / "untrusted-root.pem", rogue.cert)
    untrusted = _write_host(
        directory,
        "untrusted",
        *issue_host(rogue, f"web01.payments.{ENTERPRISE_DOMAIN}", (f"web01.payments.{ENTERPRISE_DOMAIN}",)),
    )

    deep = [issuing]
    for level in range(2, 5):
        deep.append(issue_ca(deep[-1], f"Example Corp Sub CA {level}"))
    long_cert, long_key = issue_host(deep[-1], f"deep01.{ENTERPRISE_DOMAIN}", (f"deep01.{ENTERPRISE_DOMAIN}",))
    long_chain = _write_host(directory, "long-chain", long_cert, long_key, *reversed(deep))
    return EnterprisePki(
        directory=directory,
        root=directory / "root.pem",
        intermediate=directory / "intermediate.pem",
        crl=crl,
        untrusted_root=directory / "untrusted-root.pem",
        web=web,
        db=db,
        expired=expired,
        revoked=revoked,
        untrusted=untrusted,
        long_chain=long_chain,
    )


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
