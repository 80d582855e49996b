"""One-method source interfaces, as in go-spiffe: consumers declare what they read, producers
(the CA's authority manager, the agent's cache, a test fixture) satisfy it structurally."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from spiffe_core.bundle import Bundle
    from spiffe_core.spiffe_id import TrustDomain


class BundleSource(Protocol):
    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        """The bundle of exactly this trust domain, or None when it is not known.

        Bundles of different trust domains are never merged: a validator asks for the bundle of the
        trust domain named by the SVID it checks, and only that one.
        """
        ...
