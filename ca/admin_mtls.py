"""Admins who authenticate with an X509-SVID over mTLS (docs/admin-api.md "mTLS admins").

A client certificate chain names an admin when

1. it is an X509-SVID that chains to the trust domain's *current* bundle at this moment
   (:func:`~spiffe_core.x509_svid.verify_x509_svid`; the TLS listener's own store only ever grows, so a
   root removed from the bundle stops working here, not there);
2. its SPIFFE ID is in this CA's trust domain (a federated domain's SVID administers nothing here);
3. its serial is not revoked (the authority snapshot lists the revoked serials of unexpired SVIDs);
4. its SPIFFE ID is a configured admin (``[[admin_api.admins]]``, with roles) or the SPIFFE ID of a
   registration entry with ``admin: true`` (which confers ``admin_entry_role``).

Failing 1-3 is an authentication failure (401); a valid SVID that is no admin authenticates with no
role, and the guard refuses it 403.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from ca.rbac import Role
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import NotAuthenticated, X509SvidError
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import verify_x509_svid


class PublishedTrust(Protocol):
    """What this module reads of the authority snapshot (:class:`ca.authority.AuthoritySet`)."""

    @property
    def bundle(self) -> Bundle: ...
    @property
    def revoked_serials(self) -> frozenset[int]: ...


@dataclass(frozen=True, slots=True)
class MtlsIdentity:
    spiffe_id: SpiffeId
    roles: frozenset[Role]


class MtlsAdmins:
    """Decides who an admin client certificate names and which roles it holds (module docstring)."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        current: Callable[[], PublishedTrust],
        admins: Mapping[SpiffeId, frozenset[Role]],
        is_admin_entry: Callable[[SpiffeId], bool],
        admin_entry_role: Role,
        clock: Clock,
    ) -> None:
        self._trust_domain = trust_domain
        self._current = current
        self._admins = dict(admins)
        self._is_admin_entry = is_admin_entry
        self._admin_entry_role = admin_entry_role
        self._clock = clock

    def authenticate(self, chain: Sequence[x509.Certificate]) -> MtlsIdentity:
        """The identity ``chain`` (leaf first, as the client sent it) proves; NotAuthenticated if none."""
        published = self._current()
        try:
            spiffe_id, _ = verify_x509_svid(chain, published.bundle, self._clock.now())
        except X509SvidError as err:
            raise NotAuthenticated(
                f"client certificate is not a valid X509-SVID of {self._trust_domain} now: {err}"
            ) from err
        if not spiffe_id.is_member_of(self._trust_domain):
            raise NotAuthenticated(f"client SVID {spiffe_id} is not of trust domain {self._trust_domain}")
        serial = chain[0].serial_number
        if serial in published.revoked_serials:
            raise NotAuthenticated(f"client SVID {spiffe_id} (serial {serial:x}) is revoked")
        roles = set(self._admins.get(spiffe_id, frozenset()))
        if self._is_admin_entry(spiffe_id):
            roles.add(self._admin_entry_role)
        return MtlsIdentity(spiffe_id, frozenset(roles))
