"""A small signing CA for the agent's tests: it signs CSRs and public keys into X509-SVIDs with the
validity a test asks for, using the same templates the real CA issues with (``spiffe_core.x509_svid``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spiffe_core.bundle import Bundle, JwtAuthority
from spiffe_core.keys import KeyType, PublicKey, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import X509Svid, signing_cert_builder, x509_svid_template


@dataclass(frozen=True, slots=True)
class SigningCa:
    trust_domain: TrustDomain
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    jwt_key: ec.EllipticCurvePrivateKey = field(repr=False)
    jwt_key_id: str = "jwt-1"

    __test__ = False  # not a pytest test class

    @classmethod
    def create(cls, trust_domain: TrustDomain, now: datetime, ttl: timedelta = timedelta(days=1)) -> SigningCa:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"agent test CA {trust_domain}")])
        cert = signing_cert_builder(
            trust_domain=trust_domain,
            public_key=key.public_key(),
            subject=subject,
            issuer_name=None,
            issuer_public_key=None,
            not_before=now - timedelta(minutes=5),
            not_after=now + ttl,
        ).sign(key, hashes.SHA256())
        return cls(trust_domain, cert, key, ec.generate_private_key(ec.SECP256R1()))

    @property
    def authority_id(self) -> str:
        """How the CA names this authority in ``tainted_authority_ids``: its subject key identifier, hex."""
        return x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()).digest.hex()

    def bundle(self, sequence: int = 1) -> Bundle:
        return Bundle(
            self.trust_domain,
            (self.cert,),
            (JwtAuthority(self.jwt_key_id, self.jwt_key.public_key()),),
            sequence=sequence,
        )

    def sign(
        self,
        spiffe_id: SpiffeId,
        public_key: PublicKey,
        *,
        not_before: datetime,
        not_after: datetime,
        dns_names: Sequence[str] = (),
    ) -> tuple[x509.Certificate, ...]:
        leaf = x509_svid_template(
            spiffe_id=spiffe_id,
            public_key=public_key,
            issuer=self.cert,
            not_before=not_before,
            not_after=not_after,
            dns_names=dns_names,
        ).builder.sign(self.key, hashes.SHA256())
        return (leaf,)

    def sign_csr(
        self, csr_der: bytes, spiffe_id: SpiffeId, *, now: datetime, ttl: timedelta, dns_names: Sequence[str] = ()
    ) -> tuple[x509.Certificate, ...]:
        public_key = x509.load_der_x509_csr(csr_der).public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        return self.sign(
            spiffe_id, public_key, not_before=now - timedelta(seconds=10), not_after=now + ttl, dns_names=dns_names
        )

    def issue(self, spiffe_id: SpiffeId, *, not_before: datetime, not_after: datetime) -> X509Svid:
        """An SVID with a key generated here."""
        key = generate_private_key(KeyType.EC_P256)
        return X509Svid(
            spiffe_id, self.sign(spiffe_id, key.public_key(), not_before=not_before, not_after=not_after), key
        )
