"""The default upstream: every CA certificate is its own root."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from ca.crl import RevokedSerial
from ca.signing import sign
from spiffe_core.keys import PrivateKey
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import signing_cert_builder, validate_signing_cert


class SelfSignedUpstream:
    def mint_x509_ca(
        self,
        *,
        private_key: PrivateKey,
        trust_domain: TrustDomain,
        subject: x509.Name,
        not_before: datetime,
        not_after: datetime,
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        builder = signing_cert_builder(
            trust_domain=trust_domain,
            public_key=private_key.public_key(),
            subject=subject,
            issuer_name=None,
            issuer_public_key=None,
            not_before=not_before,
            not_after=not_after,
        )
        cert = sign(builder, private_key)
        validate_signing_cert(cert)
        return cert, ()

    def root_crl(
        self,
        root: x509.Certificate,
        revoked: Sequence[RevokedSerial],
        this_update: datetime,
        next_update: datetime,
        number: int,
    ) -> x509.CertificateRevocationList | None:
        """Never needed: a self-signed CA is its own root, and its own CRL is the root's."""
        return None
