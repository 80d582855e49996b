"""The interface every upstream authority implements, and the subject naming all of them share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from spiffe_core.keys import PrivateKey
from spiffe_core.spiffe_id import TrustDomain

if TYPE_CHECKING:
    from ca.crl import RevokedSerial


@dataclass(frozen=True, slots=True)
class CaSubject:
    """How CA certificates are named. Each CA gets a unique subject (X509-SVID.md §3 asks signing
    certificates to be distinguishable): the organization, plus a serialNumber attribute holding the
    authority's ID."""

    organization: str = "trustmesh"
    common_name: str = ""

    def name_for(self, trust_domain: TrustDomain, authority_id: str) -> x509.Name:
        attributes = [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization),
            x509.NameAttribute(NameOID.COMMON_NAME, self.common_name or f"trustmesh CA {trust_domain}"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, authority_id),
        ]
        return x509.Name(attributes)


class UpstreamAuthority(Protocol):
    def mint_x509_ca(
        self,
        *,
        private_key: PrivateKey,
        trust_domain: TrustDomain,
        subject: x509.Name,
        not_before: datetime,
        not_after: datetime,
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """Certify a new CA key. Returns the CA certificate and the upstream chain above it, ending
        at the root that goes into the bundle (empty for a self-signed CA). ``not_after`` may be
        shortened to the upstream's own expiry. Raises UpstreamUnavailable when the upstream is down."""
        ...

    def root_crl(
        self,
        root: x509.Certificate,
        revoked: Sequence[RevokedSerial],
        this_update: datetime,
        next_update: datetime,
        number: int,
    ) -> x509.CertificateRevocationList | None:
        """A CRL for the upstream root ``root`` listing ``revoked`` (revoked trustmesh CAs under it),
        signed with the root's key and valid until at least ``next_update``; None when this upstream
        does not hold that key (the root was replaced, or the upstream is an intermediate of a root it
        does not hold). An upstream that keeps the key elsewhere (Vault) raises UpstreamUnavailable
        when it cannot be reached, and FailedPrecondition saying why when its CRL cannot be used."""
        ...
