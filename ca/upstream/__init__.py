"""Upstream authorities: who signs trustmesh's X.509 CA certificates.

``self-signed`` (the default) makes each CA its own root. ``disk`` has an enterprise root (or
intermediate) whose certificate and key are given as files sign each CA, so the enterprise keeps its
root and the trust bundle holds that root. ``vault-pki`` has Vault's PKI secrets engine sign each CA
(:class:`VaultPkiUpstream`; docs/vault.md). Each kind implements :class:`UpstreamAuthority`.
"""

from __future__ import annotations

from ca.upstream.base import CaSubject, UpstreamAuthority
from ca.upstream.disk import DiskUpstream
from ca.upstream.self_signed import SelfSignedUpstream
from ca.upstream.vault_pki import VaultPkiUpstream

__all__ = ["CaSubject", "DiskUpstream", "SelfSignedUpstream", "UpstreamAuthority", "VaultPkiUpstream"]
