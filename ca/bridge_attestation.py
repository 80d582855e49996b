"""x509pop node attestation as the CA runs it (issue 10; :mod:`bridge.x509pop`): the ``[bridge]``
configuration's trust anchors and CRLs, read from their files on every attempt (so a replaced CRL
counts at once), the mapping rules from the datastore, also read per attempt, and the challenge
ledger every replica shares (:class:`DatastoreChallenges`). The agentless exchange
(:mod:`ca.bridge_exchange`) reads the trust and the rules the same way.

The files are read once at start-up too, so a CA with a missing or broken anchor file refuses to
start (ConfigError naming the key) rather than refusing every agent later. A file that breaks while
the CA runs refuses attempts with a FailedPrecondition that does not show the CA's paths to the
caller; the log has the details.

**The challenge key.** Challenges are sealed with an HMAC (:mod:`bridge.x509pop_challenge`) under a
key every replica must hold, so that a nonce one replica issued is accepted by another. It is one
random 32-byte key kept in the datastore (``shared_secrets``), created by the first replica that needs
it with an insert-if-absent, so replicas starting together still agree on one key; each replica reads
it once and keeps it in memory. Deriving it instead was rejected: what all replicas share besides the
datastore is either public (the trust domain, the bundle) or not extractable (the CA's signing keys
may live in Vault Transit, and they rotate). The datastore is the one shared place the CA already
trusts with state whose loss or leak matters; whoever can read it could forge challenges, but a forged
challenge gains nothing without the enterprise key that must sign it and a chain that verifies (the
MAC guards freshness and the binding to the chain, not the proof). The key is never logged nor shown
by any API. Single use is kept there too: a nonce is recorded (its SHA-256, until it expires) when its
proof succeeds, under a primary key, so a replay is refused on every replica.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from bridge.legacy_chain import ChainLimits, LegacyTrust, load_legacy_trust
from bridge.mapping import MappingRule
from bridge.x509pop import ChallengeLedger, X509PopAttestor
from bridge.x509pop_challenge import KEY_BYTES
from ca.config import BridgeConfig
from ca.store.engine import Database
from ca.store.repositories import SharedSecretRepository, UsedNonceRepository
from spiffe_core.clock import Clock
from spiffe_core.errors import ConfigError, FailedPrecondition, InvalidArgument
from spiffe_core.spiffe_id import TrustDomain

log = logging.getLogger(__name__)

# The name of the challenge key in the datastore's shared secrets.
CHALLENGE_KEY = "x509pop-challenge-key"


class ConfiguredTrust:
    """The ``[bridge]`` trust anchors and CRLs, loaded afresh for every attempt; ``what`` names the use
    (x509pop attestation, the agentless exchange) in refusals."""

    def __init__(self, config: BridgeConfig, what: str = "x509pop attestation") -> None:
        self._config = config
        self._what = what
        self._limits = ChainLimits(config.max_chain_length, config.max_rsa_bits)

    def _load(self) -> LegacyTrust:
        return load_legacy_trust(self._config.trust_anchors, self._config.crls, self._limits)

    def check(self) -> None:
        """ConfigError when an anchor or CRL file cannot be read or parsed now (at start-up)."""
        try:
            self._load()
        except InvalidArgument as err:
            raise ConfigError(f"bridge: {err}; fix bridge.trust_anchors / bridge.crls") from err

    def __call__(self) -> LegacyTrust:
        try:
            return self._load()
        except InvalidArgument as err:
            log.error("%s refused: %s; fix bridge.trust_anchors / bridge.crls", self._what, err)
            raise FailedPrecondition(
                f"{self._what} is unavailable: the CA cannot read its enterprise trust anchors or CRLs; "
                "its operator must check the [bridge] files (the CA's log says which)"
            ) from err


class DatastoreChallenges:
    """x509pop's :class:`~bridge.x509pop.ChallengeLedger` over the datastore every replica shares (the
    module docstring says why the key lives there). Thread-safe: the node API calls it from workers."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self._database = database
        self._clock = clock
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def key(self) -> bytes:
        """The challenge key: read (or, by the first replica, created) once, then kept in memory."""
        with self._lock:
            if self._key is None:
                with self._database.transaction() as session:
                    self._key = SharedSecretRepository(session).get_or_create(
                        CHALLENGE_KEY, lambda: secrets.token_bytes(KEY_BYTES), self._clock.now()
                    )
            return self._key

    def spend(self, digest: str, expires_at: datetime) -> bool:
        """Record a used nonce, or an accepted exchange statement (:data:`bridge.exchange.StatementLedger`):
        both are single-use proofs known by their SHA-256, so they share one table."""
        with self._database.transaction() as session:
            return UsedNonceRepository(session).spend(digest, expires_at)


def x509pop_attestor(
    config: BridgeConfig,
    trust_domain: TrustDomain,
    rules: Callable[[], Sequence[MappingRule]],
    ledger: ChallengeLedger,
) -> X509PopAttestor:
    """The x509pop attestor for ``config``, whose files are checked now (ConfigError), sealing and
    spending its challenges through ``ledger``."""
    trust = ConfiguredTrust(config)
    trust.check()
    return X509PopAttestor(trust_domain, trust, rules, ledger)
