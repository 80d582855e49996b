"""Who is calling the admin API (docs/admin-api.md "Authentication").

Two listeners, two ways to know:

* the local **Unix socket** is the break-glass path for root on the CA host: the kernel names the
  connecting user (``SO_PEERCRED``), the caller is ``unix:uid=<n>`` and passes every role check —
  whoever can open the 0600 socket in root's directory can already read the CA's keys. The audit log
  names it as such (method ``unix-socket``, role ``break-glass``);
* the **HTTPS listener** takes a bearer JWT from the IdP (:mod:`ca.oidc`), or else an admin X509-SVID
  presented over mTLS (:mod:`ca.admin_mtls`). A bearer token, when sent, decides alone: a client that
  also presents a certificate (a workload's SVID, say) is judged by the token.

Authenticators may block (a JWKS fetch, a datastore read): the guard runs them in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509

from ca.admin_mtls import MtlsAdmins
from ca.oidc import OidcVerifier
from ca.rbac import ANY_ROLE
from spiffe_core.errors import NotAuthenticated


@dataclass(frozen=True, slots=True)
class Presented:
    """What a request carries that could prove who sent it."""

    source: str  # the client's address (IP) or "unix"
    bearer_token: str | None = field(default=None, repr=False)
    client_chain: tuple[x509.Certificate, ...] = ()  # TLS client certificate chain, leaf first
    peer_uid: int | None = None  # the Unix socket peer's uid


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``name`` and ``method`` as the audit log names them, the roles held."""

    name: str
    method: str
    roles: frozenset[str]
    break_glass: bool = False


class Authenticator(Protocol):
    def authenticate(self, presented: Presented) -> Principal:
        """The caller ``presented`` proves; NotAuthenticated (401) when it proves none."""
        ...


class BreakGlassAuthenticator:
    """The local admin socket: the kernel-reported uid is the caller (module docstring)."""

    def authenticate(self, presented: Presented) -> Principal:
        if presented.peer_uid is None:
            raise NotAuthenticated("the admin socket could not read the caller's credentials (SO_PEERCRED)")
        return Principal(f"unix:uid={presented.peer_uid}", "unix-socket", frozenset(ANY_ROLE), break_glass=True)


class RemoteAuthenticator:
    """The HTTPS listener: a bearer token (if ``oidc`` is configured), else an mTLS admin SVID."""

    def __init__(self, oidc: OidcVerifier | None, mtls: MtlsAdmins) -> None:
        self._oidc = oidc
        self._mtls = mtls

    def authenticate(self, presented: Presented) -> Principal:
        if presented.bearer_token is not None:
            if self._oidc is None:
                raise NotAuthenticated(
                    "bearer tokens are not accepted here ([admin_api.oidc] is not configured); use an admin X509-SVID"
                )
            identity = self._oidc.verify(presented.bearer_token)
            return Principal(f"oidc:{identity.issuer}#{identity.subject}", "oidc", frozenset(identity.roles))
        if presented.client_chain:
            admin = self._mtls.authenticate(presented.client_chain)
            return Principal(str(admin.spiffe_id), "mtls", frozenset(admin.roles))
        raise NotAuthenticated(
            "no credentials; send 'Authorization: Bearer <token>' from the IdP or present an admin X509-SVID"
        )
