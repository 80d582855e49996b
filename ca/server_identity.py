"""The CA's own serving identity for the node API's TLS listeners (DESIGN §3; wire/node.proto).

The CA serves the node API with an X509-SVID of its own, ``spiffe://<td>/trustmesh/server``, signed by
its active authority like any other SVID, with one DNS SAN: the configured ``server.server_name``
(agents dial with that name as the TLS target name override, and verify the certificate against the
trust bundle they got at attestation). The key is generated in this process and never written to
disk; a new key and SVID replace the old ones at half of the SVID's life, and the TLS listeners pick
the new pair up on their next handshake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.entries import check_dns_name
from ca.issuance import IssuedX509Svid, X509SvidRequest
from ca.signing import digest_for
from spiffe_core.clock import Clock
from spiffe_core.errors import TrustmeshError
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

log = logging.getLogger(__name__)

SERVER_PATH_SEGMENTS = ("trustmesh", "server")
# After a failed renewal, try again this soon (the current SVID keeps serving meanwhile).
_RETRY_DELAYS = (1.0, 5.0, 15.0, 30.0, 60.0)


def server_id(trust_domain: TrustDomain) -> SpiffeId:
    return SpiffeId.from_segments(trust_domain, *SERVER_PATH_SEGMENTS)


class X509Issuer(Protocol):
    def mint_x509_svids(self, requests: Sequence[X509SvidRequest]) -> list[IssuedX509Svid]: ...


@dataclass(frozen=True, slots=True)
class ServingCredentials:
    """A private key and the X509-SVID chain for it, PEM, as TLS stacks take them."""

    private_key_pem: bytes = field(repr=False)
    cert_chain_pem: bytes
    issued_at: datetime
    not_after: datetime

    @property
    def renew_at(self) -> datetime:
        """Half-way through the SVID's life, as for every other SVID (DESIGN §4)."""
        return self.issued_at + (self.not_after - self.issued_at) / 2


class ServerIdentity:
    """Holds the current serving credentials; :meth:`run` keeps them fresh."""

    def __init__(
        self,
        issuer: X509Issuer,
        trust_domain: TrustDomain,
        server_name: str,
        clock: Clock,
        *,
        key_type: KeyType = KeyType.EC_P256,
        ttl: timedelta | None = None,
    ) -> None:
        check_dns_name(server_name)
        self._issuer = issuer
        self._spiffe_id = server_id(trust_domain)
        self._server_name = server_name
        self._clock = clock
        self._key_type = key_type
        self._ttl = ttl
        self._current: ServingCredentials | None = None

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._spiffe_id

    def get_current(self) -> ServingCredentials:
        """The credentials to serve with now; :meth:`rotate` must have run once."""
        current = self._current
        if current is None:
            raise RuntimeError("ServerIdentity.rotate() must run before the node API serves")
        return current

    def rotate(self) -> ServingCredentials:
        """Generate a new key, have it signed, and make it current. Blocking (key generation, signing,
        one datastore write); raises what issuance raises (NoActiveAuthority, UpstreamUnavailable)."""
        key = generate_private_key(self._key_type)
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, digest_for(key))
        issued_at = self._clock.now()
        (svid,) = self._issuer.mint_x509_svids(
            [
                X509SvidRequest(
                    csr.public_bytes(serialization.Encoding.DER), self._spiffe_id, (self._server_name,), self._ttl
                )
            ]
        )
        credentials = ServingCredentials(
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            cert_chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain),
            issued_at=issued_at,
            not_after=svid.not_after,
        )
        self._current = credentials  # a reference swap: readers never see half an update
        log.info("node API serving SVID %s renewed; valid until %s", self._spiffe_id, svid.not_after.isoformat())
        return credentials

    async def run(self) -> None:
        """Renew at half life until cancelled. A failed renewal is logged and retried with backoff
        while the current SVID still serves."""
        failures = 0
        while True:
            if failures:
                delay = _RETRY_DELAYS[min(failures, len(_RETRY_DELAYS)) - 1]
            else:
                delay = (self.get_current().renew_at - self._clock.now()).total_seconds()
            await asyncio.sleep(max(delay, 0.0))
            try:
                await asyncio.to_thread(self.rotate)
            except TrustmeshError as err:
                failures += 1
                log.warning("could not renew the node API serving SVID (%s); retrying", err)
            else:
                failures = 0
