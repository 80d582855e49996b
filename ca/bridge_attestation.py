"""x509pop node attestation as the CA runs it (issue 10; :mod:`bridge.x509pop`): the ``[bridge]``
configuration's trust anchors and CRLs, read from their files on every attempt (so a replaced CRL
counts at once), and the mapping rules from the datastore, also read per attempt. The agentless
exchange (:mod:`ca.bridge_exchange`) reads them the same way.

The files are read once at start-up too, so a CA with a missing or broken anchor file refuses to
start (ConfigError naming the key) rather than refusing every agent later. A file that breaks while
the CA runs refuses attempts with a FailedPrecondition that does not show the CA's paths to the
caller; the log has the details.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from bridge.legacy_chain import ChainLimits, LegacyTrust, load_legacy_trust
from bridge.mapping import MappingRule
from bridge.x509pop import X509PopAttestor
from ca.config import BridgeConfig
from spiffe_core.errors import ConfigError, FailedPrecondition, InvalidArgument
from spiffe_core.spiffe_id import TrustDomain

log = logging.getLogger(__name__)


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


def x509pop_attestor(
    config: BridgeConfig, trust_domain: TrustDomain, rules: Callable[[], Sequence[MappingRule]]
) -> X509PopAttestor:
    """The x509pop attestor for ``config``, whose files are checked now (ConfigError)."""
    trust = ConfiguredTrust(config)
    trust.check()
    return X509PopAttestor(trust_domain, trust, rules)
