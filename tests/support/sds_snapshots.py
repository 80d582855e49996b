"""Test CAs, X509-SVIDs, CRLs and agent cache snapshots for the SDS tests.

Built with the same templates the CA issues with (``spiffe_core.x509_svid``), so what Envoy sees in
the tests is shaped like production material: a self-signed signing certificate per trust domain
and leaves signed directly by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from sds.cache import CacheSnapshot, WorkloadSvid
from spiffe_core.bundle import Bundle
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import signing_cert_builder, x509_svid_template


@dataclass(frozen=True, slots=True)
class TestCa:
    trust_domain: TrustDomain
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    __test__ = False  # not a pytest test class

    @classmethod
    def create(cls, trust_domain: str) -> TestCa:
        td = TrustDomain(trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {trust_domain}")])
        cert = signing_cert_builder(
            trust_domain=td,
            public_key=key.public_key(),
            subject=subject,
            issuer_name=None,
            issuer_public_key=None,
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=1),
        ).sign(key, hashes.SHA256())
        return cls(td, cert, key)

    def bundle(self, sequence: int = 1) -> Bundle:
        return Bundle(self.trust_domain, (self.cert,), sequence=sequence)

    def svid(
        self,
        path: str,
        selectors: Iterable[str] = ("unix:uid:1000",),
        *,
        entry_id: str | None = None,
        federates_with: Iterable[str] = (),
        claiming: str | None = None,
    ) -> WorkloadSvid:
        """An X509-SVID for ``path`` in this CA's trust domain — or, with ``claiming``, a certificate
        signed by this CA that carries that SPIFFE ID of another trust domain: what a malicious or
        compromised partner CA would issue to impersonate a workload of ours."""
        spiffe_id = SpiffeId(self.trust_domain, path) if claiming is None else SpiffeId.parse(claiming)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        leaf = x509_svid_template(
            spiffe_id=spiffe_id,
            public_key=key.public_key(),
            issuer=self.cert,
            not_before=now - timedelta(minutes=1),
            not_after=now + timedelta(hours=1),
        ).builder.sign(self.key, hashes.SHA256())
        return WorkloadSvid(
            entry_id=entry_id or path,
            spiffe_id=spiffe_id,
            cert_chain=(leaf,),
            private_key=key,
            selectors=frozenset(Selector.parse(s) for s in selectors),
            federates_with=frozenset(TrustDomain(td) for td in federates_with),
        )

    def crl_der(self, revoked_serials: Iterable[int] = ()) -> bytes:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - timedelta(minutes=1))
            .next_update(now + timedelta(hours=1))
            .add_extension(x509.CRLNumber(1), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(Encoding.DER)


def snapshot(
    ca: TestCa,
    svids: Iterable[WorkloadSvid] = (),
    *,
    version: int = 1,
    federated: Mapping[str, Bundle] | None = None,
    crls: Iterable[bytes] = (),
    with_bundle: bool = True,
    legacy_roots: Mapping[str, bytes] | None = None,
) -> CacheSnapshot:
    return CacheSnapshot(
        trust_domain=ca.trust_domain,
        bundle=ca.bundle() if with_bundle else None,
        federated_bundles={TrustDomain(td): b for td, b in (federated or {}).items()},
        svids=tuple(svids),
        crls=tuple(crls),
        legacy_roots=dict(legacy_roots or {}),
        version=version,
    )
