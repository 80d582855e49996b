"""Vault's PKI secrets engine signs trustmesh's CA certificates (DESIGN §3 "Upstream authority",
``vault-pki``): each trustmesh CA is an intermediate issued by ``<mount>/root/sign-intermediate``,
and Vault keeps the root's key.

What Vault returns is checked before it is used, as if it came from a stranger: the certificate must
be a CA (cA=true, keyCertSign) for our public key with the trust domain's SPIFFE ID as its URI SAN
(X509-SVID §4), issued by the CA the mount publishes at ``<mount>/ca/pem``, with a chain that links up
to a self-signed root.

Envoy needs a current CRL for every CA on a chain, the root included (DESIGN §8). The root's key is
in Vault, so its CRL is Vault's: :meth:`VaultPkiUpstream.root_crl` revokes in Vault every revoked
trustmesh CA that Vault's CRL does not list yet (``<mount>/revoke``), fetches the CRL
(``<mount>/crl/pem``), has Vault rebuild it when it would expire before the CA's own CRLs
(``<mount>/crl/rotate``), and checks its signature against the root. When the mount is itself an
intermediate, the CAs above it need CRLs only their holder can sign, so no CRLs are published then
(docs/vault.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.crl import RevokedSerial
from ca.signing import digest_for
from ca.vault import VaultClient
from spiffe_core.errors import FailedPrecondition, InvalidArgument, UpstreamUnavailable
from spiffe_core.keys import PrivateKey
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import load_pem_certificates, validate_signing_cert

USER = "vault-pki upstream"
# What cryptography raises for a certificate its supposed issuer did not sign (names, signature, key kind).
_NOT_ISSUED_BY = (ValueError, TypeError, InvalidSignature)


class VaultPkiUpstream:
    """An :class:`~ca.upstream.base.UpstreamAuthority` over the PKI engine mounted at ``mount``."""

    def __init__(self, vault: VaultClient, mount: str) -> None:
        self._vault = vault
        self._mount = mount

    def fetch_issuer(self) -> x509.Certificate:
        """The CA the mount issues with (``GET <mount>/ca/pem``)."""
        path = f"{self._mount}/ca/pem"
        pem = self._vault.call(
            lambda client: client.secrets.pki.read_ca_certificate(mount_point=self._mount), path=path, capability="read"
        )
        try:
            return load_pem_certificates(str(pem).encode())[0]
        except InvalidArgument:
            raise FailedPrecondition(
                f"{self._where()} publishes no CA certificate at {path}; generate or import one "
                f"('vault write {self._mount}/root/generate/internal common_name=…')"
            ) from None

    def mint_x509_ca(
        self,
        *,
        private_key: PrivateKey,
        trust_domain: TrustDomain,
        subject: x509.Name,
        not_before: datetime,
        not_after: datetime,
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        issuer = self.fetch_issuer()
        expires = issuer.not_valid_after_utc
        if expires <= not_before:
            raise UpstreamUnavailable(
                f"{self._where()}: the CA of {self._mount} ({issuer.subject.rfc4514_string()}) expired at "
                f"{expires.isoformat()}; it cannot certify a new CA. Give the mount a valid issuer "
                "(docs/runbooks/root-rotation.md)"
            )
        spiffe_id = str(trust_domain.id)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(subject)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
            .sign(private_key, digest_for(private_key))
        )
        common_name = subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        path = f"{self._mount}/root/sign-intermediate"
        response = self._vault.call(
            lambda client: client.secrets.pki.sign_intermediate(
                csr.public_bytes(serialization.Encoding.PEM).decode(),
                str(common_name),
                extra_params={
                    "use_csr_values": True,  # keep our subject (with its unique serialNumber) and the URI SAN
                    "uri_sans": spiffe_id,
                    "exclude_cn_from_sans": True,
                    "not_after": min(not_after, expires).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "format": "pem",
                },
                mount_point=self._mount,
            ),
            path=path,
            capability="update",
        )
        data = self._vault.data(response, path)
        cert = self._certificates(self._vault.field(data, "certificate", str, path), path)[0]
        chain_pem = data.get("ca_chain") or [self._vault.field(data, "issuing_ca", str, path)]
        chain = self._certificates("\n".join(str(pem) for pem in chain_pem), path)
        self._check(cert, chain, issuer, private_key, trust_domain)
        return cert, chain

    def _check(
        self,
        cert: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        issuer: x509.Certificate,
        private_key: PrivateKey,
        trust_domain: TrustDomain,
    ) -> None:
        """Refuse (FailedPrecondition) a signed CA certificate that is not what was asked for."""
        if cert.public_key() != private_key.public_key():
            raise self._refused("a certificate for another public key")
        try:
            certified = validate_signing_cert(cert)
        except InvalidArgument as err:
            raise self._refused(f"a certificate that is no CA certificate ({err})") from None
        if certified != trust_domain:
            raise self._refused(f"a CA certificate whose URI SAN is not {trust_domain.id}")
        if chain[0] != issuer:
            raise self._refused(f"a chain that does not start at the CA {self._mount}/ca/pem publishes")
        for child, parent in zip((cert, *chain), (*chain, chain[-1]), strict=True):
            if not _issued_by(child, parent):
                raise self._refused(f"a chain in which {child.subject.rfc4514_string()} is not signed by the next CA")

    def root_crl(
        self,
        root: x509.Certificate,
        revoked: Sequence[RevokedSerial],
        this_update: datetime,
        next_update: datetime,
        number: int,
    ) -> x509.CertificateRevocationList | None:
        """Vault's CRL of ``root``, listing every serial in ``revoked`` and valid until at least
        ``next_update`` (``this_update`` and ``number`` are Vault's own). None when ``root`` is not the
        mount's CA any more or the mount is an intermediate; FailedPrecondition when Vault's CRL
        cannot meet that (the reason is published as the CA's CRL warning)."""
        issuer = self.fetch_issuer()
        if issuer != root or not _issued_by(root, root):
            return None
        crl = self._fetch_crl(root)
        missing = [entry for entry in revoked if crl.get_revoked_certificate_by_serial_number(entry.serial) is None]
        for entry in missing:
            self._revoke(entry.serial)
        if missing:
            crl = self._fetch_crl(root)
        if self._shortfall(crl, revoked, next_update) is not None:
            self._rotate_crl()  # Vault rebuilds its CRL on revocation, or when asked
            crl = self._fetch_crl(root)
        problem = self._shortfall(crl, revoked, next_update)
        if problem is not None:
            raise FailedPrecondition(f"{self._where()} {problem}")
        return crl

    def _shortfall(
        self, crl: x509.CertificateRevocationList, revoked: Sequence[RevokedSerial], next_update: datetime
    ) -> str | None:
        """What keeps Vault's CRL from serving as the root's CRL until ``next_update``, or None."""
        unlisted = [
            entry.serial for entry in revoked if crl.get_revoked_certificate_by_serial_number(entry.serial) is None
        ]
        if unlisted:
            return (
                f"does not list the revoked trustmesh CA serial {unlisted[0]:x} on its CRL of {self._mount} even after "
                f"revoking it and rebuilding the CRL; check the mount's CRL configuration ({self._mount}/config/crl)"
            )
        expires = crl.next_update_utc
        if expires is None or expires < next_update:
            at = "never say when" if expires is None else f"at {expires.isoformat()}"
            return (
                f"issues CRLs of {self._mount} that expire sooner than revocation.crl_ttl asks ({at}, not "
                f"{next_update.isoformat()}); raise the mount's CRL expiry ('vault write {self._mount}/config/crl "
                "expiry=72h') or lower revocation.crl_ttl"
            )
        return None

    def _fetch_crl(self, root: x509.Certificate) -> x509.CertificateRevocationList:
        path = f"{self._mount}/crl/pem"
        pem = self._vault.call(
            lambda client: client.secrets.pki.read_crl(mount_point=self._mount), path=path, capability="read"
        )
        try:
            crl = x509.load_pem_x509_crl(str(pem).encode())
        except ValueError:
            raise FailedPrecondition(f"{self._where()} answered {path} with no PEM CRL") from None
        if crl.issuer != root.subject or not crl.is_signature_valid(root.public_key()):  # type: ignore[arg-type]
            raise FailedPrecondition(
                f"{self._where()} answered {path} with a CRL not signed by the root {root.subject.rfc4514_string()}"
            )
        try:
            crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        except x509.ExtensionNotFound:  # RFC 5280 §5.2.1: a MUST; it is how the CA names each CRL's issuer
            raise FailedPrecondition(
                f"{self._where()} answered {path} with a CRL without authorityKeyIdentifier"
            ) from None
        return crl

    def _revoke(self, serial: int) -> None:
        hex_serial = serial.to_bytes((serial.bit_length() + 7) // 8 or 1, "big").hex(":")
        self._vault.call(
            lambda client: client.secrets.pki.revoke_certificate(hex_serial, mount_point=self._mount),
            path=f"{self._mount}/revoke",
            capability="update",
        )

    def _rotate_crl(self) -> None:
        self._vault.call(
            lambda client: client.secrets.pki.rotate_crl(mount_point=self._mount),
            path=f"{self._mount}/crl/rotate",
            capability="read",
        )

    def _certificates(self, pem: str, path: str) -> tuple[x509.Certificate, ...]:
        try:
            return load_pem_certificates(pem.encode())
        except InvalidArgument:
            raise FailedPrecondition(f"{self._where()} answered {path} with no PEM certificate") from None

    def _refused(self, what: str) -> FailedPrecondition:
        return FailedPrecondition(
            f"{self._where()} returned {what} from {self._mount}/root/sign-intermediate; refusing it"
        )

    def _where(self) -> str:
        return f"{USER}: Vault at {self._vault.address}"


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except _NOT_ISSUED_BY:
        return False
    return True
