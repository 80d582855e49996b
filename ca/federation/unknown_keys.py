"""Refresh on an unknown key (issue 9, deliverable 3; DESIGN §3 "Federation"): an agent whose workload met
a JWT key ID that its copy of a partner's bundle lacks asks, through the node API's
``RefreshFederatedBundle``, for that partner's bundle now rather than at the partner's next refresh
hint, and validates once more with the answer.

Neither SPIRE nor the spec does this: a partner that starts signing with a key published moments ago
(an emergency rotation, a hint the relying side follows loosely) otherwise fails validation until the
next scheduled fetch.

What one agent can make the CA do is bounded three times: the agent must have an entry that federates
with the trust domain (:meth:`~ca.node_service.NodeService.get_federated_bundle`), the node API limits
its calls (``node_api.ratelimit.bundle_refresh``), and the partner is fetched at most once per
``federation.unknown_key_refresh_interval`` whoever asks
(:meth:`~ca.federation.refresher.FederationRefresher.refresh_for_unknown_key`). When the CA's copy holds
the key already (the agent's Sync simply had not delivered it yet) nothing is fetched.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from spiffe_core.bundle import Bundle
from spiffe_core.spiffe_id import SpiffeId, TrustDomain


class FederatedBundles(Protocol):
    """The partner bundles the CA holds, as an agent may see them (:class:`ca.node_service.NodeService`)."""

    def get_federated_bundle(self, agent: SpiffeId, trust_domain: TrustDomain) -> Bundle | None: ...


class PartnerRefresher(Protocol):
    """Fetches a partner now (:class:`ca.federation.refresher.FederationRefresher`); True on a good fetch."""

    async def refresh_for_unknown_key(self, trust_domain: TrustDomain) -> bool: ...


class UnknownKeyRefresh:
    def __init__(self, bundles: FederatedBundles, refresher: PartnerRefresher) -> None:
        self._bundles = bundles
        self._refresher = refresher

    async def fetch_bundle_with_key(self, agent: SpiffeId, trust_domain: TrustDomain, key_id: str) -> Bundle | None:
        """The bundle of ``trust_domain`` the CA holds once it has tried to get one with ``key_id``: its
        current copy when that has the key, else the copy after a fetch of the partner (or the same
        copy, when the partner was fetched for an unknown key moments ago or did not answer). None
        before any good fetch. Raises NotAuthorized when no entry of ``agent`` federates with it."""
        held = await asyncio.to_thread(self._bundles.get_federated_bundle, agent, trust_domain)
        if held is not None and held.find_jwt_authority(key_id) is not None:
            return held
        if not await self._refresher.refresh_for_unknown_key(trust_domain):
            return held
        return await asyncio.to_thread(self._bundles.get_federated_bundle, agent, trust_domain)
