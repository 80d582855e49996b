"""The SPIFFE IDs trustmesh reserves for its own parts (DESIGN §3): the CA's serving identity.

Kept apart from :mod:`ca.server_identity` (which signs and renews that identity) so the CLI, which only
needs to *expect* it from a remote CA, does not load the datastore and signing code to know it.
"""

from __future__ import annotations

from spiffe_core.spiffe_id import SpiffeId, TrustDomain

SERVER_PATH_SEGMENTS = ("trustmesh", "server")


def server_id(trust_domain: TrustDomain) -> SpiffeId:
    """``spiffe://<td>/trustmesh/server``: the CA's node API and admin API serve an X509-SVID for it."""
    return SpiffeId.from_segments(trust_domain, *SERVER_PATH_SEGMENTS)
