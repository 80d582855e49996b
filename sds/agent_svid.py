"""The agent's own identity: node attestation, its X509-SVID, and keeping that SVID fresh (DESIGN §4;
wire/node.proto ``Attest`` and ``RenewAgent``).

First start: generate a key here, attest with the join token over server-authenticated TLS (the CA is
verified against ``trust_bundle_path``, the CA's roots as the operator handed them over, as SPIRE's
agent does), check the SVID the CA returned, and save it with the CA's bundle (0600).

While the CA cannot be reached (not up yet, restarting), attestation is retried with the renewal's
backoff and one log line per attempt at most every 10 s; a refused token stops the agent at once.

x509pop (``attestation = "x509pop"``, :mod:`sds.x509pop_proof`): instead of a join token, the agent
proves it holds its enterprise certificate's key (``AttestChallenge``, then ``Attest``). The proof can be
repeated, so an agent whose SVID expired attests again without an operator.

Restart: load the saved SVID and bundle and carry on without calling the CA ("loaded saved SVID …"), so
a restart during a CA outage keeps serving. A saved SVID that has expired is replaced by attesting again
when a (new) join token is configured; otherwise the agent stops with the fix. A used token is never
retried on its own: join tokens work once.

Renewal: at half the SVID's life (±jitter), a fresh key and ``RenewAgent`` over mTLS with the current
SVID; failures are retried with backoff (0.5 s doubling to 30 s, jittered; at most one log line per
10 s) while the current SVID is still valid. A Sync state that taints an authority on the SVID's chain,
revokes its serial, or brings a bundle that no longer verifies it (:meth:`AgentIdentity.follow_sync_state`)
renews at once instead of at half life: the CA makes officers taint an authority before they revoke
it, so the renewal happens while the old SVID still authenticates.

Whenever the SVID or the bundle changes, the node client gets the new credentials (a new channel).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeAlias

from cryptography import x509

from sds.node_client import AgentCredentials, AttestResult, SyncState, make_csr
from sds.persistence import AgentStore
from sds.planning import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    SignReason,
    next_rotation,
    own_svid_reason,
    received_life_start,
)
from sds.x509pop_proof import X509PopProof
from spiffe_core.backoff import LogThrottle, backoff_delay
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    TrustmeshError,
    UpstreamUnavailable,
    X509SvidError,
)
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import X509Svid, load_pem_certificates, verify_x509_svid

log = logging.getLogger(__name__)

# How this node proves who it is when it attests: a join token, or x509pop's enterprise certificate.
NodeProof: TypeAlias = str | X509PopProof

JOIN_TOKEN_METHOD = "join_token"  # noqa: S105 - the attestation method's name, not a secret
_HOW_TO_GET_ONE = "generate one with 'trustmesh-ca token generate' and set join_token (or join_token_file)"


class NodeAttestationApi(Protocol):
    """What the agent's identity needs from the node API client (:class:`sds.node_client.NodeClient`)."""

    async def challenge(self, roots: Bundle, method: str, payload: bytes) -> bytes: ...
    async def attest(self, roots: Bundle, method: str, payload: bytes, csr: bytes) -> AttestResult: ...
    async def renew(self, csr: bytes) -> tuple[x509.Certificate, ...]: ...
    def use_credentials(self, credentials: AgentCredentials) -> None: ...


@dataclass(frozen=True, slots=True)
class AgentSvidParams:
    trust_domain: TrustDomain
    key_type: KeyType = KeyType.EC_P256
    rotation_fraction: float = 0.5
    jitter: float = 0.1


def load_bootstrap_bundle(path: Path | None, trust_domain: TrustDomain) -> Bundle | None:
    """The CA's root certificates from ``trust_bundle_path`` (PEM) as a bundle of ``trust_domain``,
    or None when no path is configured. Raises ConfigError naming the key and the fix."""
    if path is None:
        return None
    try:
        certs = load_pem_certificates(path.read_bytes())
    except OSError as err:
        raise ConfigError(
            f"trust_bundle_path: cannot read {path} ({err.strerror}); copy the CA's bundle there"
        ) from err
    except X509SvidError as err:
        raise ConfigError(
            f"trust_bundle_path: {path} holds no PEM certificates ({err}); "
            "export the CA's roots with 'trustmesh-ca bundle show --format pem'"
        ) from err
    return Bundle(trust_domain, x509_authorities=certs)


class AgentIdentity:
    """Holds the agent's current credentials; :meth:`start` once, then :meth:`run` keeps them fresh."""

    def __init__(
        self,
        *,
        client: NodeAttestationApi,
        store: AgentStore,
        params: AgentSvidParams,
        join_token: Callable[[], str | None],
        bootstrap_bundle: Bundle | None,
        clock: Clock,
        x509pop: X509PopProof | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._params = params
        self._join_token = join_token
        self._x509pop = x509pop
        self._bootstrap = bootstrap_bundle
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._current: AgentCredentials | None = None
        self._rotate_at: datetime | None = None
        self._last_state: SyncState | None = None
        self._renew_now = asyncio.Event()
        self._throttle = LogThrottle()
        # Held from reading the current credentials to using the replacement built from them: a renewal
        # and a new bundle from Sync arrive concurrently, and each keeps the other's half only if it
        # reads it after the other was saved (else a renewed SVID or a new bundle is silently lost).
        self._replacing = asyncio.Lock()

    def get_current(self) -> AgentCredentials:
        """The agent's SVID and bundle now; :meth:`start` must have succeeded."""
        if self._current is None:
            raise FailedPrecondition("the agent has no X509-SVID yet; AgentIdentity.start() must run first")
        return self._current

    @property
    def spiffe_id(self) -> SpiffeId:
        return self.get_current().svid.spiffe_id

    @property
    def rotate_at(self) -> datetime:
        self.get_current()
        assert self._rotate_at is not None
        return self._rotate_at

    async def start(self) -> AgentCredentials:
        """Load the saved identity, or attest when there is none or it has expired (see the module
        docstring). Raises ConfigError/FailedPrecondition with the fix when neither is possible, and
        what :meth:`NodeClient.attest` raises when the CA refuses or cannot be reached."""
        saved = await asyncio.to_thread(self._store.load_agent)
        if saved is not None:
            expiry = saved.svid.leaf.not_valid_after_utc
            if self._clock.now() < expiry:
                self._set(AgentCredentials(saved.svid, saved.bundle))
                log.info("loaded saved SVID %s (valid until %s)", saved.svid.spiffe_id, expiry.isoformat())
                return self.get_current()
            log.warning("the saved agent SVID %s expired at %s", saved.svid.spiffe_id, expiry.isoformat())
            return await self._reattest(expiry, saved.bundle)
        proof: NodeProof | None = self._x509pop or await asyncio.to_thread(self._join_token)
        if proof is None:
            raise ConfigError(f"the agent has not attested yet and no join token is configured; {_HOW_TO_GET_ONE}")
        if self._bootstrap is None:
            raise ConfigError(
                "trust_bundle_path is not set; the agent needs the CA's root certificates (PEM) to verify the CA "
                "on first contact — export them with 'trustmesh-ca bundle show --format pem'"
            )
        return await self._attest_when_reachable(proof, self._bootstrap)

    async def _reattest(self, expired_at: datetime, saved_bundle: Bundle) -> AgentCredentials:
        proof = await self._proof_after_expiry(expired_at)
        return await self._attest_when_reachable(proof, self._reattestation_roots(saved_bundle))

    async def _attest_when_reachable(self, proof: NodeProof, roots: Bundle) -> AgentCredentials:
        """:meth:`attest`, retried with backoff (0.5 s doubling to 30 s, jittered) while the CA cannot
        be reached (UpstreamUnavailable: not started yet, restarting, network down), so an agent
        started before its CA waits for it. Each attempt is logged, at most one line per 10 s (the next
        line counts those held back). Anything the CA answers (a refused, used or expired token) is
        raised at once: join tokens work once, so retrying one would only repeat the refusal (and an
        x509pop refusal names a certificate problem an operator must fix)."""
        failures = 0
        while True:
            try:
                return await self.attest(proof, roots)
            except UpstreamUnavailable as err:
                failures += 1
                delay = backoff_delay(failures, self._rng, BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS)
                if self._throttle.should_log(time.monotonic(), "attest"):
                    log.warning(
                        "attestation attempt %d failed: %s; retrying in %.1f s%s",
                        failures,
                        err,
                        delay,
                        self._throttle.note("attest"),
                    )
                await asyncio.sleep(delay)

    async def _proof_after_expiry(self, expired_at: datetime) -> NodeProof:
        """What to attest again with: the x509pop proof (it can be repeated), else the join token;
        FailedPrecondition (with the fix) when there is none."""
        if self._x509pop is not None:
            return self._x509pop
        token = await asyncio.to_thread(self._join_token)
        if token is None:
            raise FailedPrecondition(
                f"agent SVID expired at {expired_at.isoformat()} and no join token is configured; "
                "generate one with 'trustmesh-ca token generate' and set join_token"
            )
        return token

    def _reattestation_roots(self, saved_bundle: Bundle) -> Bundle:
        """The saved bundle plus ``trust_bundle_path``: the CA may have rotated its roots while we were away."""
        if self._bootstrap is None:
            return saved_bundle
        known = set(saved_bundle.x509_authorities)
        extra = [c for c in self._bootstrap.x509_authorities if c not in known]
        return saved_bundle.with_changes(x509_authorities=[*saved_bundle.x509_authorities, *extra])

    async def attest(self, proof: NodeProof, roots: Bundle) -> AgentCredentials:
        """Attest with ``proof`` (a join token, or x509pop's two steps) against a CA verified by
        ``roots``; save and use the new identity."""
        key = await asyncio.to_thread(generate_private_key, self._params.key_type)
        if isinstance(proof, X509PopProof):
            result = await proof.attest(self._client, roots, make_csr(key))
        else:
            result = await self._client.attest(roots, JOIN_TOKEN_METHOD, proof.encode(), make_csr(key))
        if not result.spiffe_id.is_member_of(self._params.trust_domain):
            raise InvalidArgument(
                f"the CA assigned agent ID {result.spiffe_id}, outside the configured trust domain "
                f"{self._params.trust_domain}; check trust_domain and server_address"
            )
        svid = self._checked(result.spiffe_id, result.cert_chain, key, result.bundle)
        async with self._replacing:
            await self._save(AgentCredentials(svid, result.bundle))
        log.info("attested as %s (SVID valid until %s)", svid.spiffe_id, svid.leaf.not_valid_after_utc.isoformat())
        return self.get_current()

    async def renew(self) -> AgentCredentials:
        """A new key and X509-SVID for the same agent ID (RenewAgent over mTLS); saved and used."""
        key = await asyncio.to_thread(generate_private_key, self._params.key_type)
        chain = await self._client.renew(make_csr(key))
        async with self._replacing:
            current = self.get_current()  # with any bundle that arrived during the call
            svid = self._checked(current.svid.spiffe_id, chain, key, current.bundle)
            await self._save(AgentCredentials(svid, current.bundle))
        log.info("renewed agent SVID %s (valid until %s)", svid.spiffe_id, svid.leaf.not_valid_after_utc.isoformat())
        return self.get_current()

    async def update_bundle(self, bundle: Bundle) -> None:
        """Verify the CA with ``bundle`` from now on (the Sync stream delivered a new one); saved."""
        if bundle.trust_domain != self._params.trust_domain:
            raise InvalidArgument(
                f"bundle of {bundle.trust_domain} cannot replace the bundle of {self._params.trust_domain}"
            )
        async with self._replacing:
            current = self.get_current()  # with the SVID of a renewal saved meanwhile
            if bundle == current.bundle:
                return
            await self._save(AgentCredentials(current.svid, bundle))
        log.info("trust bundle of %s updated to sequence %d", bundle.trust_domain, bundle.sequence)

    async def follow_sync_state(self, state: SyncState) -> None:
        """Take a state from the Sync stream: verify the CA with its bundle from now on
        (:meth:`update_bundle`), and have :meth:`run` renew the agent SVID at once when the state
        taints an authority on its chain, revokes its serial, or its bundle no longer verifies it."""
        await self.update_bundle(state.bundle)
        self._last_state = state
        reason = self._reason_to_renew()
        if reason is None or self._renew_now.is_set():
            return
        if self._throttle.should_log(time.monotonic(), "renewal-request"):
            log.warning(
                "agent SVID %s must be replaced (%s); renewing it now%s",
                self.spiffe_id,
                reason,
                self._throttle.note("renewal-request"),
            )
        self._renew_now.set()

    def _reason_to_renew(self) -> SignReason | None:
        state = self._last_state
        if state is None:
            return None
        return own_svid_reason(self.get_current().svid.cert_chain, state, self._clock.now())

    async def _wait_for_renewal(self) -> bool:
        """Wait for the rotation time or a renewal request. False when the request is moot by now (a
        renewal still in flight when the state came has already replaced the SVID it was about)."""
        delay = max((self.rotate_at - self._clock.now()).total_seconds(), 0.0)
        try:
            async with asyncio.timeout(delay):
                await self._renew_now.wait()
        except TimeoutError:
            return True
        self._renew_now.clear()
        return self._reason_to_renew() is not None or self._clock.now() >= self.rotate_at

    async def run(self) -> None:
        """Renew at the rotation time, or at once when :meth:`follow_sync_state` asks, until
        cancelled; failures are retried with backoff and logged at most once per 10 s. When the SVID
        expires before a renewal succeeds, attest again with a configured join token, or raise
        FailedPrecondition saying how to get one."""
        failures = 0
        delay = 0.0
        while True:
            if failures:
                await asyncio.sleep(delay)  # a pending renewal request is what is being retried
            elif not await self._wait_for_renewal():
                continue
            self._renew_now.clear()
            current = self.get_current()
            expiry = current.svid.leaf.not_valid_after_utc
            # Only a missing token stops the agent; what the CA answers (even FAILED_PRECONDITION) is retried.
            proof = await self._proof_after_expiry(expiry) if self._clock.now() >= expiry else None
            try:
                if proof is not None:
                    await self.attest(proof, self._reattestation_roots(current.bundle))
                else:
                    await self.renew()
            except TrustmeshError as err:
                problem = f"could not renew the agent SVID {current.svid.spiffe_id} ({err})"
            else:
                # A CA that still signs with a tainted authority must not make this loop spin.
                reason = self._reason_to_renew()
                if reason is None:
                    failures = 0
                    continue
                problem = f"the renewed agent SVID {current.svid.spiffe_id} must be replaced too ({reason})"
            failures += 1
            delay = backoff_delay(failures, self._rng, BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS)
            if self._throttle.should_log(time.monotonic()):
                log.warning("%s; retrying in %.1f s%s", problem, delay, self._throttle.note())

    def _checked(
        self, spiffe_id: SpiffeId, chain: tuple[x509.Certificate, ...], key: PrivateKey, bundle: Bundle
    ) -> X509Svid:
        """Refuse an SVID that is not for ``spiffe_id``, not for our key, or does not chain to the bundle."""
        try:
            verified_id, _ = verify_x509_svid(chain, bundle, self._clock.now())
        except X509SvidError as err:
            raise X509SvidError(f"the CA returned an agent SVID that does not verify: {err}") from err
        if verified_id != spiffe_id:
            raise X509SvidError(f"the CA returned an SVID for {verified_id}, not the agent ID {spiffe_id}")
        if chain[0].public_key() != key.public_key():
            raise X509SvidError(f"the CA returned an SVID for {spiffe_id} that is not for the key the agent sent")
        return X509Svid(spiffe_id, chain, key)

    async def _save(self, credentials: AgentCredentials) -> None:
        await asyncio.to_thread(self._store.save_agent, credentials.svid, credentials.bundle)
        self._set(credentials, received=True)

    def _set(self, credentials: AgentCredentials, *, received: bool = False) -> None:
        """Use ``credentials``; ``received`` when the SVID just came from the CA (not from disk)."""
        previous = self._current
        self._current = credentials
        if previous is None or previous.svid is not credentials.svid:
            leaf = credentials.svid.leaf
            p = self._params
            now = self._clock.now()
            self._rotate_at = next_rotation(
                now,
                received_life_start(leaf.not_valid_before_utc, leaf.not_valid_after_utc, now)
                if received
                else leaf.not_valid_before_utc,
                leaf.not_valid_after_utc,
                fraction=p.rotation_fraction,
                jitter=p.jitter,
                rng=self._rng,
            )
        self._client.use_credentials(credentials)
