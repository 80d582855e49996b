"""Who may call which admin route: the route-by-role matrix, as data (docs/admin-api.md "Roles").

Three roles split the CA's powers so that no one everyday credential holds them all:

* ``security-officer``: the trust domain's keys — authorities (prepare, rotate, activate, taint,
  revoke), leaf revocation, banning and evicting agents, federation relationships (create, refresh,
  delete: a partner's bundle decides whose SVIDs workloads trust), and minting arbitrary SVIDs
  (``x509 mint``, ``jwt mint``: whoever can mint any identity can impersonate any workload).
* ``operator``: day-to-day registration — entries, join tokens and legacy identity mapping rules.
* ``auditor``: reads, and the audit log.

Every route the admin app serves has exactly one :class:`RoutePolicy` here, found by method and route
template (``/v1/entries/{entry_id}``), and :mod:`ca.admin_guard` enforces it *before* the route runs:
a refusal therefore looks the same whether or not the object named in the path exists. A route that is
not listed cannot be reached remotely (the guard refuses it as unclassified) and fails the matrix test,
so a new route must be classified here before it ships. The Unix socket's break-glass caller passes
every policy. ``/docs``, the OpenAPI document and its assets, liveness, readiness and the CRLs are
public: they hold nothing that is not published anyway; so are the web console's login, logout and
stylesheet (:mod:`ca.console`), whose pages and actions are classified like the API routes they show.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class Role(enum.StrEnum):
    SECURITY_OFFICER = "security-officer"
    OPERATOR = "operator"
    AUDITOR = "auditor"


# The order in which a caller's roles are tried: an action is audited under the first role that allows it.
ROLE_ORDER = (Role.SECURITY_OFFICER, Role.OPERATOR, Role.AUDITOR)
# Who the audit log names as the role of a caller on the local socket (who passes every policy).
BREAK_GLASS_ROLE = "break-glass"

ANY_ROLE = frozenset(ROLE_ORDER)
OFFICER = frozenset({Role.SECURITY_OFFICER})
OPERATOR = frozenset({Role.OPERATOR})
AUDIT_READERS = frozenset({Role.AUDITOR, Role.SECURITY_OFFICER})
PUBLIC: frozenset[Role] = frozenset()  # no credentials needed at all


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """One admin route: ``method`` and ``path`` (the route template), the ``action`` name the audit log
    uses for it, and the roles that may call it (:data:`PUBLIC`: anyone, unauthenticated)."""

    method: str
    path: str
    action: str
    roles: frozenset[Role]

    @property
    def is_public(self) -> bool:
        return not self.roles

    def allowed_role(self, held: Iterable[str]) -> Role | None:
        """The first role of :data:`ROLE_ORDER` that the caller holds and this route allows; None if none."""
        held = frozenset(held)
        return next((role for role in ROLE_ORDER if role in self.roles and role in held), None)


def _policies(*rows: tuple[str, str, str, frozenset[Role]]) -> Mapping[tuple[str, str], RoutePolicy]:
    table: dict[tuple[str, str], RoutePolicy] = {}
    for method, path, action, roles in rows:
        if (method, path) in table:
            raise ValueError(f"{method} {path} is classified twice")
        table[(method, path)] = RoutePolicy(method, path, action, roles)
    return table


ROUTE_POLICIES: Mapping[tuple[str, str], RoutePolicy] = _policies(
    # Public: health, CRLs, the API's own description.
    ("GET", "/live", "health.live", PUBLIC),
    ("GET", "/ready", "health.ready", PUBLIC),
    ("GET", "/crl/{authority_id}.crl", "crl.get", PUBLIC),
    ("GET", "/openapi.json", "docs.openapi", PUBLIC),
    ("GET", "/docs", "docs.page", PUBLIC),
    ("GET", "/docs/oauth2-redirect", "docs.oauth2_redirect", PUBLIC),
    ("GET", "/static-offline-docs", "docs.asset", PUBLIC),
    # Reads: any role.
    ("GET", "/metrics", "metrics.get", ANY_ROLE),
    ("GET", "/v1/bundle", "bundle.get", ANY_ROLE),
    ("GET", "/v1/entries", "entry.list", ANY_ROLE),
    ("GET", "/v1/entries/{entry_id}", "entry.show", ANY_ROLE),
    ("GET", "/v1/authorities", "authority.list", ANY_ROLE),
    ("GET", "/v1/authorities/{authority_id}", "authority.show", ANY_ROLE),
    ("GET", "/v1/crls", "crl.list", ANY_ROLE),
    ("GET", "/v1/agents", "agent.list", ANY_ROLE),
    ("GET", "/v1/agent", "agent.show", ANY_ROLE),
    ("GET", "/v1/federation/relationships", "federation.list", ANY_ROLE),
    ("GET", "/v1/federation/relationships/{trust_domain}", "federation.show", ANY_ROLE),
    ("GET", "/v1/mappings", "mapping.list", ANY_ROLE),
    ("GET", "/v1/mappings/{name}", "mapping.show", ANY_ROLE),
    ("GET", "/v1/inventory/svids", "inventory.svids", ANY_ROLE),
    ("GET", "/v1/inventory/join-tokens", "inventory.join_tokens", ANY_ROLE),
    ("GET", "/v1/inventory/authority-timeline", "inventory.authority_timeline", ANY_ROLE),
    ("GET", "/v1/inventory/summary", "inventory.summary", ANY_ROLE),
    # Registration: operators.
    ("POST", "/v1/entries", "entry.create", OPERATOR),
    ("PUT", "/v1/entries/{entry_id}", "entry.update", OPERATOR),
    ("DELETE", "/v1/entries/{entry_id}", "entry.delete", OPERATOR),
    ("POST", "/v1/join-tokens", "join_token.generate", OPERATOR),
    ("POST", "/v1/mappings", "mapping.add", OPERATOR),
    ("DELETE", "/v1/mappings/{name}", "mapping.delete", OPERATOR),
    ("PUT", "/v1/mappings", "mapping.load", OPERATOR),
    # The trust domain's keys and identities: security officers.
    ("POST", "/v1/authorities/prepare", "authority.prepare", OFFICER),
    ("POST", "/v1/authorities/rotate", "authority.rotate", OFFICER),
    ("POST", "/v1/authorities/{authority_id}/activate", "authority.activate", OFFICER),
    ("POST", "/v1/authorities/{authority_id}/taint", "authority.taint", OFFICER),
    ("POST", "/v1/authorities/{authority_id}/revoke", "authority.revoke", OFFICER),
    ("POST", "/v1/revocations", "svid.revoke", OFFICER),
    ("POST", "/v1/agents/ban", "agent.ban", OFFICER),
    ("POST", "/v1/agents/unban", "agent.unban", OFFICER),
    ("POST", "/v1/agents/evict", "agent.evict", OFFICER),
    ("POST", "/v1/x509-svids", "x509_svid.mint", OFFICER),
    ("POST", "/v1/jwt-svids", "jwt_svid.mint", OFFICER),
    ("POST", "/v1/federation/relationships", "federation.create", OFFICER),
    ("POST", "/v1/federation/relationships/{trust_domain}/refresh", "federation.refresh", OFFICER),
    ("DELETE", "/v1/federation/relationships/{trust_domain}", "federation.delete", OFFICER),
    # The audit log: auditors and security officers.
    ("GET", "/v1/audit", "audit.list", AUDIT_READERS),
    ("GET", "/v1/audit/verify", "audit.verify", AUDIT_READERS),
    ("GET", "/v1/audit/export", "audit.export", AUDIT_READERS),
    # The web console (docs/console.md). Its stylesheet, login and logout are public: the login verifies
    # the pasted token itself, and logout only clears the cookie (with the session's CSRF token).
    ("GET", "/console", "console.root", PUBLIC),
    ("GET", "/console/static/console.css", "console.stylesheet", PUBLIC),
    ("GET", "/console/login", "console.login_page", PUBLIC),
    ("POST", "/console/login", "console.login", PUBLIC),
    ("POST", "/console/logout", "console.logout", PUBLIC),
    ("GET", "/console/", "console.overview", ANY_ROLE),
    ("GET", "/console/authorities", "console.authorities", ANY_ROLE),
    ("GET", "/console/svids", "console.svids", ANY_ROLE),
    ("GET", "/console/agents", "console.agents", ANY_ROLE),
    ("GET", "/console/federation", "console.federation", ANY_ROLE),
    ("GET", "/console/audit", "console.audit", AUDIT_READERS),
    # The console's officer actions are the API's, under the same action names.
    ("POST", "/console/authorities/prepare", "authority.prepare", OFFICER),
    ("POST", "/console/authorities/rotate", "authority.rotate", OFFICER),
    ("POST", "/console/authorities/{authority_id}/activate", "authority.activate", OFFICER),
    ("POST", "/console/authorities/{authority_id}/taint", "authority.taint", OFFICER),
    ("POST", "/console/authorities/{authority_id}/revoke", "authority.revoke", OFFICER),
    ("POST", "/console/svids/revoke", "svid.revoke", OFFICER),
)


def policy_for(method: str, path: str) -> RoutePolicy | None:
    """The policy of the route ``method path`` (a route template); None for a route nobody classified."""
    return ROUTE_POLICIES.get((method.upper(), path))


def matrix_markdown() -> str:
    """The matrix as the Markdown table docs/admin-api.md shows (a test keeps the two equal)."""
    header = "| Method | Route | Action | " + " | ".join(role.value for role in ROLE_ORDER) + " |"
    lines = [header, "|" + "---|" * (3 + len(ROLE_ORDER))]
    for policy in ROUTE_POLICIES.values():
        cells = ["public" if policy.is_public else ("yes" if role in policy.roles else "-") for role in ROLE_ORDER]
        lines.append(f"| {policy.method} | `{policy.path}` | `{policy.action}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
