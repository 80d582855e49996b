"""The admin API's gate: authenticate every request, check the route-by-role matrix, audit refusals.

:class:`AdminGuard` is ASGI middleware in front of the admin app. For each request it

1. finds the route the request is for (its template, e.g. ``/v1/authorities/{authority_id}/taint``)
   and that route's :class:`~ca.rbac.RoutePolicy`; public routes pass untouched;
2. asks the listener's :class:`~ca.admin_auth.Authenticator` who is calling (in a worker thread);
3. lets the call through under the first role the caller holds that the policy allows, leaving the
   :class:`~ca.store.records.Actor` (and the roles held) in the request state for the route
   (:mod:`ca.http_caller`), or refuses it.

All of this happens before the route runs and without looking anything up, so a refusal reads the
same whether or not the object in the path exists. A refusal is ``401`` (no or bad credentials, with
``WWW-Authenticate: Bearer``) or ``403`` (authenticated, but the role is missing), with the body
``{"error": "<one reason>"}``; it never echoes a token. Each one is written to the audit log (outcome
``denied``, the matrix's action name, the route and its path parameters as the target), throttled per
caller like every refusal (:mod:`ca.audit_throttle`), so a flood of bad requests cannot flood the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from ca.admin_auth import Authenticator, Presented, Principal
from ca.console.render import SECURITY_HEADERS, refusal_page
from ca.console.session import is_console_path, session_token
from ca.rbac import BREAK_GLASS_ROLE, RoutePolicy, policy_for
from ca.store.records import Actor, AuditEvent, JsonValue
from spiffe_core.clock import Clock
from spiffe_core.errors import NotAuthenticated, TrustmeshError, transport_status

log = logging.getLogger(__name__)

MAX_TARGET_PART = 200  # characters of a path parameter or unknown path kept in an audit record
# The scope extension (:mod:`ca.admin_transport`) that carries a Unix socket peer's credentials.
PEER_CREDENTIALS_EXTENSION = "trustmesh.peer_credentials"


class AuditRecorder(Protocol):
    """Records refusals, throttled per caller (:meth:`ca.audit.AuditTrail.record_refusal`)."""

    def record_refusal(self, event: AuditEvent) -> None: ...


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> tuple[str | None, Mapping[str, Any]]:
    """The template of the route that fully matches ``scope`` and its path parameters, or (None, {})
    when none does (an unknown path, or a known path with another method)."""
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "")), dict(child.get("path_params", {}))
    return None, {}


def _header(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope.get("headers", ()) if key == name]


def presented_credentials(scope: Scope) -> Presented:
    """Read the credentials a request carries: its ``Authorization: Bearer`` header (on a console page
    without one, the token in the console's session cookie, :mod:`ca.console.session`), the TLS client
    chain (ASGI TLS extension, PEM) and the Unix peer's uid. Raises NotAuthenticated for an
    Authorization header that is not exactly one bearer token."""
    extensions = scope.get("extensions") or {}
    client = scope.get("client")
    creds = extensions.get(PEER_CREDENTIALS_EXTENSION)
    source = "unix" if creds is not None else (str(client[0]) if client else "unknown")
    authorization = _header(scope, b"authorization")
    token: str | None = None if authorization else session_token(scope)
    if authorization:
        scheme, _, value = authorization[0].decode("latin-1").partition(" ")
        if len(authorization) > 1 or scheme.lower() != "bearer" or not value.strip():
            raise NotAuthenticated("the Authorization header must be exactly one 'Bearer <token>'")
        token = value.strip()
    chain_pem = (extensions.get("tls") or {}).get("client_cert_chain") or ()
    try:
        chain = tuple(x509.load_pem_x509_certificate(pem.encode()) for pem in chain_pem)
    except ValueError as err:
        raise NotAuthenticated(f"the client certificate cannot be read: {err}") from err
    return Presented(source, token, chain, None if creds is None else int(creds.uid))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TARGET_PART else text[: MAX_TARGET_PART - 1] + "…"


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    reason: str
    invalid_token: bool = False

    def headers(self, console: bool) -> list[tuple[bytes, bytes]]:
        if console:
            headers = [(b"content-type", b"text/html; charset=utf-8")]
            headers += [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
        else:
            headers = [(b"content-type", b"application/json")]
        if self.status == 401:
            challenge = 'Bearer realm="trustmesh"' + (', error="invalid_token"' if self.invalid_token else "")
            headers.append((b"www-authenticate", challenge.encode()))
        return headers


class AdminGuard:
    """ASGI middleware enforcing :mod:`ca.rbac` for the app whose routes are ``routes`` (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        authenticator: Authenticator,
        audit: AuditRecorder,
        clock: Clock,
    ) -> None:
        self._app = app
        self._routes = routes
        self._authenticator = authenticator
        self._audit = audit
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        template, params = route_template(self._routes, scope)
        # An unserved path the matrix names (a route classified ahead of its code) is still guarded.
        policy = policy_for(method, template if template is not None else scope.get("path", ""))
        if policy is not None and policy.is_public:
            await self._app(scope, receive, send)
            return
        target = _clip(f"{method} {template if template is not None else scope.get('path', '')}")
        console = is_console_path(str(scope.get("path", "")))
        presented: Presented | None = None
        try:
            presented = presented_credentials(scope)
            principal = await asyncio.to_thread(self._authenticator.authenticate, presented)
        except TrustmeshError as err:
            status = transport_status(err)
            if status is None:
                raise
            # RFC 6750 §3.1: "invalid_token" when a token (or a malformed Authorization header) came.
            invalid_token = presented is None or presented.bearer_token is not None
            refusal = _Refusal(status[0], str(err), invalid_token=invalid_token)
            source = presented.source if presented is not None else _source(scope)
            actor = Actor(f"unauthenticated:{source}", _method_tried(presented))
            await self._refuse(
                refusal,
                actor=actor,
                policy=policy,
                target=target,
                params=params,
                source=source,
                send=send,
                console=console,
            )
            return
        role = self._authorize(principal, policy, template)
        if isinstance(role, _Refusal):
            actor = Actor(principal.name, principal.method)
            await self._refuse(
                role,
                actor=actor,
                policy=policy,
                target=target,
                params=params,
                source=presented.source,
                send=send,
                console=console,
            )
            return
        state = scope.setdefault("state", {})
        state["actor"] = Actor(principal.name, principal.method, role)
        state["roles"] = principal.roles
        await self._app(scope, receive, send)

    def _authorize(self, principal: Principal, policy: RoutePolicy | None, template: str | None) -> str | _Refusal:
        """The role the call is allowed under, or the refusal."""
        if principal.break_glass:
            return BREAK_GLASS_ROLE
        if policy is None and template is None:
            return ""  # no such route: the app answers 404 or 405 to an authenticated caller
        if policy is None:
            return _Refusal(
                403, f"{template} is not classified in the role matrix; only the local admin socket may call it"
            )
        role = policy.allowed_role(principal.roles)
        if role is None:
            held = ", ".join(sorted(principal.roles)) or "no role"
            needed = " or ".join(sorted(policy.roles))
            return _Refusal(
                403,
                f"{principal.name} may not {policy.action}: {policy.method} {policy.path} needs {needed}; "
                f"it holds {held}",
            )
        return role.value

    async def _refuse(
        self,
        refusal: _Refusal,
        *,
        actor: Actor,
        policy: RoutePolicy | None,
        target: str,
        params: Mapping[str, Any],
        source: str,
        send: Send,
        console: bool,
    ) -> None:
        action = policy.action if policy is not None else "admin_api.request"
        detail: dict[str, JsonValue] = {"source": source, "status": refusal.status}
        detail.update({f"path.{k}": _clip(str(v)) for k, v in params.items()})
        event = AuditEvent(self._clock.now(), actor, action, target, "denied", detail, refusal.reason)
        await asyncio.to_thread(self._audit.record_refusal, event)  # throttled per caller; never raises
        # A console page is refused with a page (saying why and where to log in); the API with JSON.
        body = (
            refusal_page(refusal.status, refusal.reason) if console else json.dumps({"error": refusal.reason}).encode()
        )
        await send({"type": "http.response.start", "status": refusal.status, "headers": refusal.headers(console)})
        await send({"type": "http.response.body", "body": body})


def _source(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _method_tried(presented: Presented | None) -> str:
    if presented is None or presented.bearer_token is not None:
        return "oidc"
    if presented.client_chain:
        return "mtls"
    return "unix-socket" if presented.source == "unix" else "none"
