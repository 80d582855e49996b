"""An enterprise CA on disk signs trustmesh's CA certificates; the enterprise keeps its root.

Configured with the upstream certificate, its key and, when the upstream is itself an intermediate,
the chain above it up to the root. trustmesh CAs are minted as intermediates below it, with their
lifetime capped by the upstream's own expiry. When the upstream certificate is the root the bundle
publishes, it also signs the CRL that lists revoked trustmesh intermediates (:meth:`DiskUpstream.root_crl`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca.crl import RevokedSerial, build_crl
from ca.signing import sign
from spiffe_core.errors import ConfigError, UpstreamUnavailable
from spiffe_core.keys import PrivateKey, key_type_of
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import load_pem_certificates, signing_cert_builder, validate_signing_cert

log = logging.getLogger(__name__)


class DiskUpstream:
    def __init__(self, certificate: x509.Certificate, key: PrivateKey, chain: tuple[x509.Certificate, ...]) -> None:
        if certificate.public_key() != key.public_key():
            raise ConfigError("upstream certificate and key do not match; check ca.upstream.cert_file/key_file")
        self._certificate = certificate
        self._key = key
        self._chain = chain

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the upstream certificate: tells one upstream root from its replacement."""
        return self._certificate.fingerprint(hashes.SHA256())

    @property
    def subject(self) -> str:
        return self._certificate.subject.rfc4514_string()

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, bundle_file: Path | None) -> DiskUpstream:
        """Read the upstream files; errors name the file and what is wrong with it."""
        try:
            certs = load_pem_certificates(cert_file.read_bytes())
            raw_key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            chain = load_pem_certificates(bundle_file.read_bytes()) if bundle_file else ()
        except OSError as err:
            raise ConfigError(f"ca.upstream: cannot read {err.filename}: {err.strerror}") from err
        except ValueError as err:
            raise ConfigError(f"ca.upstream.key_file {key_file}: not an unencrypted PEM private key ({err})") from err
        key_type_of(raw_key)  # type: ignore[arg-type]  # refuses unsupported key kinds with a clear message
        return cls(certs[0], raw_key, (*certs[1:], *chain))  # type: ignore[arg-type]

    def mint_x509_ca(
        self,
        *,
        private_key: PrivateKey,
        trust_domain: TrustDomain,
        subject: x509.Name,
        not_before: datetime,
        not_after: datetime,
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        expires = self._certificate.not_valid_after_utc
        if expires <= not_before:
            raise UpstreamUnavailable(
                f"the upstream CA {self.subject} expired at {expires.isoformat()}; it cannot certify a new CA. "
                "Replace ca.upstream.cert_file and key_file with a valid root (docs/runbooks/root-rotation.md)"
            )
        builder = signing_cert_builder(
            trust_domain=trust_domain,
            public_key=private_key.public_key(),
            subject=subject,
            issuer_name=self._certificate.subject,
            issuer_public_key=self._certificate.public_key(),  # type: ignore[arg-type]
            not_before=not_before,
            not_after=min(not_after, self._certificate.not_valid_after_utc),
        )
        cert = sign(builder, self._key)
        validate_signing_cert(cert)
        return cert, (self._certificate, *self._chain)

    @property
    def crl_capable(self) -> bool:
        """Whether :meth:`root_crl` can produce a CRL: the upstream certificate must be the root of the
        chain (no bundle_file CAs above it, whose CRLs we cannot sign) and allowed to sign CRLs."""
        if self._chain:
            return False
        try:
            return self._certificate.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
        except x509.ExtensionNotFound:
            return True

    def root_crl(
        self,
        root: x509.Certificate,
        revoked: Sequence[RevokedSerial],
        this_update: datetime,
        next_update: datetime,
        number: int,
    ) -> x509.CertificateRevocationList | None:
        """The CRL of the upstream root ``root``, signed with its key, listing ``revoked`` (revoked
        trustmesh intermediates under it). None when ``root`` is not the configured upstream certificate
        (it was replaced since those intermediates were minted) or when not :attr:`crl_capable`: with CAs
        above the upstream certificate, a relying party checking every CRL of the chain would need theirs
        too, which only the enterprise can sign."""
        if root != self._certificate or not self.crl_capable:
            return None
        return build_crl(
            issuer=self._certificate,
            issuer_key=self._key,
            revoked=revoked,
            this_update=this_update,
            next_update=next_update,
            number=number,
        )


class WatchedDiskUpstream:
    """A :class:`DiskUpstream` that follows its files: when the upstream certificate or key file
    changes (the enterprise replaced its root), the next CA is minted by the new one. Upstreams seen
    before are kept in memory, so the old root's CRL can still be signed while authorities under it
    are alive — until a restart, after which no CRL can be had for the old root and the CA says so
    (docs/runbooks/root-rotation.md). Files that cannot be read mid-replacement leave the last good
    upstream in use."""

    def __init__(self, cert_file: Path, key_file: Path, bundle_file: Path | None) -> None:
        self._files = (cert_file, key_file, bundle_file)
        self._stamp = self._stat()
        self._current = DiskUpstream.load(cert_file, key_file, bundle_file)
        self._seen: dict[bytes, DiskUpstream] = {self._current.fingerprint: self._current}

    def _stat(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in self._files:
            if path is None:
                continue
            try:
                info = path.stat()
            except OSError:
                stamps.append((0, 0))
            else:
                stamps.append((info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def current(self) -> DiskUpstream:
        """The upstream as the files hold it now (re-read when they changed)."""
        stamp = self._stat()
        if stamp != self._stamp:
            try:
                upstream = DiskUpstream.load(*self._files)
            except ConfigError as err:
                log.warning("ca.upstream files changed but cannot be used (%s); still minting with the old ones", err)
            else:
                self._stamp = stamp
                if upstream.fingerprint != self._current.fingerprint:
                    log.info("ca.upstream changed: new CAs are minted by %s", upstream.subject)
                self._current = upstream
                self._seen[upstream.fingerprint] = upstream
        return self._current

    def mint_x509_ca(
        self,
        *,
        private_key: PrivateKey,
        trust_domain: TrustDomain,
        subject: x509.Name,
        not_before: datetime,
        not_after: datetime,
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        return self.current().mint_x509_ca(
            private_key=private_key,
            trust_domain=trust_domain,
            subject=subject,
            not_before=not_before,
            not_after=not_after,
        )

    def root_crl(
        self,
        root: x509.Certificate,
        revoked: Sequence[RevokedSerial],
        this_update: datetime,
        next_update: datetime,
        number: int,
    ) -> x509.CertificateRevocationList | None:
        self.current()
        upstream = self._seen.get(root.fingerprint(hashes.SHA256()))
        return None if upstream is None else upstream.root_crl(root, revoked, this_update, next_update, number)
