"""The CA's own serving identity for the node API's TLS listeners (DESIGN §3; wire/node.proto).

The CA serves the node API with an X509-SVID of its own, ``spiffe://<td>/trustmesh/server``, signed by
its active authority like any other SVID, with one DNS SAN: the configured ``server.server_name``
(agents dial with that name as the TLS target name override, and verify the certificate against the
trust bundle they got at attestation). The key is generated in this process and never written to
disk; a new key and SVID replace the old ones at half of the SVID's life — or at once when the active
X.509 authority is no longer the one that signed it (rotation, taint: :meth:`ServerIdentity.authority_changed`)
— and the TLS listeners pick the new pair up on their next handshake.

A failed renewal is retried with exponential backoff (1 s doubling to 60 s, jittered) while the current
SVID keeps serving, and logged at most once per 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.audit import SERVER_IDENTITY, Issuance
from ca.entries import check_dns_name
from ca.issuance import IssuedX509Svid, X509SvidRequest
from ca.reserved_ids import server_id
from ca.signing import digest_for
from spiffe_core.backoff import LogThrottle, backoff_delay
from spiffe_core.clock import Clock
from spiffe_core.errors import TrustmeshError
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

log = logging.getLogger(__name__)

# After a failed renewal, try again after this backoff (the current SVID keeps serving meanwhile).
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0


class X509Issuer(Protocol):
    def mint_x509_svids(self, requests: Sequence[X509SvidRequest], issuance: Issuance) -> list[IssuedX509Svid]: ...


@dataclass(frozen=True, slots=True)
class ServingCredentials:
    """A private key and the X509-SVID chain for it, PEM, as TLS stacks take them."""

    private_key_pem: bytes = field(repr=False)
    cert_chain_pem: bytes
    issued_at: datetime
    not_after: datetime
    authority_id: str  # the X.509 authority that signed it (subject key identifier, hex)

    @property
    def renew_at(self) -> datetime:
        """Half-way through the SVID's life, as for every other SVID (DESIGN §4)."""
        return self.issued_at + (self.not_after - self.issued_at) / 2


class ServerIdentity:
    """Holds the current serving credentials; :meth:`run` keeps them fresh and signed by the active
    authority (``active_authority_id`` answers its ID, or None when there is none)."""

    def __init__(
        self,
        issuer: X509Issuer,
        trust_domain: TrustDomain,
        server_name: str,
        clock: Clock,
        active_authority_id: Callable[[], str | None],
        *,
        key_type: KeyType = KeyType.EC_P256,
        ttl: timedelta | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        check_dns_name(server_name)
        self._issuer = issuer
        self._spiffe_id = server_id(trust_domain)
        self._server_name = server_name
        self._clock = clock
        self._active_authority_id = active_authority_id
        self._key_type = key_type
        self._ttl = ttl
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._sleep = sleep
        self._throttle = LogThrottle()
        self._current: ServingCredentials | None = None
        # Set by run(): its loop and the event that wakes it, as one reference (read from any thread).
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    @property
    def spiffe_id(self) -> SpiffeId:
        return self._spiffe_id

    @property
    def has_credentials(self) -> bool:
        """Whether a serving SVID was ever signed (not yet when no authority could sign at start-up)."""
        return self._current is not None

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
            ],
            Issuance(SERVER_IDENTITY),
        )
        credentials = ServingCredentials(
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            cert_chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain),
            issued_at=issued_at,
            not_after=svid.not_after,
            authority_id=svid.authority_id,
        )
        self._current = credentials  # a reference swap: readers never see half an update
        log.info(
            "node API serving SVID %s renewed by authority %s; valid until %s",
            self._spiffe_id,
            svid.authority_id,
            svid.not_after.isoformat(),
        )
        return credentials

    def authority_changed(self) -> None:
        """Tell :meth:`run` that the authorities changed (an authority activated, tainted, revoked), so
        it re-issues the serving SVID at once if the active one did not sign it. Thread-safe; a no-op
        before :meth:`run` starts (run checks the authority first thing anyway)."""
        waker = self._waker
        if waker is None:
            return
        loop, event = waker
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is running to wake
            loop.call_soon_threadsafe(event.set)

    def _signed_by_active(self) -> bool:
        """False when there is no serving SVID yet, or another authority than the one that signed it is
        active; with no active authority nothing could sign a replacement, so the current SVID stands."""
        current = self._current
        if current is None:
            return False
        active = self._active_authority_id()
        return active is None or active == current.authority_id

    async def _pause(self, delay: float, wake: asyncio.Event) -> None:
        """Sleep ``delay`` seconds, or less when :meth:`authority_changed` sets ``wake``."""
        if wake.is_set():
            return
        sleeping = asyncio.ensure_future(self._sleep(delay))
        woken = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait((sleeping, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            woken.cancel()

    async def run(self) -> None:
        """Renew at half life, and at once when there is no serving SVID yet or the active authority is
        not the one that signed it (checked at start and after every :meth:`authority_changed`), until
        cancelled. A failed renewal is retried with backoff (1 s → 60 s) while the current SVID (if any)
        still serves, and logged at most once per 10 s; so is a renewal the active authority did not sign."""
        wake = asyncio.Event()
        self._waker = (asyncio.get_running_loop(), wake)
        try:
            await self._keep_fresh(wake)
        finally:
            self._waker = None

    async def _keep_fresh(self, wake: asyncio.Event) -> None:
        failures = 0
        delay = 0.0
        while True:
            if failures:
                await self._sleep(delay)  # a change of authority does not cut a backoff short
            elif self._signed_by_active():
                renew_in = (self.get_current().renew_at - self._clock.now()).total_seconds()
                await self._pause(max(renew_in, 0.0), wake)
                due = self._clock.now() >= self.get_current().renew_at
                if wake.is_set():
                    wake.clear()
                    if not due and self._signed_by_active():
                        continue  # the authorities changed, but not the one that signs
            try:
                await asyncio.to_thread(self.rotate)
            except TrustmeshError as err:
                problem = f"could not renew the node API serving SVID ({err})"
            else:
                if self._signed_by_active():
                    failures = 0
                    continue
                problem = (
                    f"the node API serving SVID was signed by authority {self.get_current().authority_id}, "
                    f"but {self._active_authority_id()} is active"
                )
            failures += 1
            delay = backoff_delay(failures, self._rng, BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS)
            if self._throttle.should_log(time.monotonic()):
                log.warning("%s; retrying in %.1f s%s", problem, delay, self._throttle.note())
