"""The console's login, logout and read-only pages (docs/console.md). Each page calls the same domain
functions as the matching admin API route and renders the result; what an officer may do from a page is
offered only when the role matrix allows it (:meth:`~ca.console.requests.Viewer.may`)."""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from ca.admin_auth import Authenticator, Presented
from ca.admin_guard import AuditRecorder
from ca.console.forms import CheckedForms
from ca.console.render import SECURITY_HEADERS, STYLESHEET
from ca.console.requests import Viewer, page, read_form, viewer
from ca.console.session import (
    COOKIE,
    CSRF_FIELD,
    LOGIN_COOKIE,
    MAX_TOKEN_CHARS,
    cookie_header,
    session_token,
)
from ca.federation.http import RelationshipOps
from ca.http_agents import AgentOps
from ca.http_audit import AuditOps
from ca.http_authorities import AuthorityOps
from ca.http_inventory import InventoryOps
from ca.inventory import SvidFilter
from ca.store.records import Actor, AuditEvent, AuditQuery
from spiffe_core.clock import Clock
from spiffe_core.durations import parse_duration
from spiffe_core.errors import InvalidArgument, TrustmeshError, transport_status

PAGES = (
    ("/console/", "Overview"),
    ("/console/authorities", "Authorities"),
    ("/console/svids", "SVIDs"),
    ("/console/agents", "Agents"),
    ("/console/federation", "Federation"),
    ("/console/audit", "Audit log"),
)
SVID_PAGE = 200
DEFAULT_WINDOW = "24h"
AUDIT_RECORDS = 100
# A JWT is three base64url parts; anything else cannot be one and would not fit a cookie.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class ConsoleOps:
    """The domain use cases the console shows (the same objects the admin API's routes call)."""

    authorities: AuthorityOps
    inventory: InventoryOps
    agents: AgentOps
    federation: RelationshipOps
    audit_log: AuditOps


@dataclass(frozen=True, slots=True)
class Nav:
    """The header of a page: the pages this viewer may open, the current one, who is looking."""

    viewer: Viewer
    current: str

    @property
    def links(self) -> tuple[tuple[str, str], ...]:
        return tuple((path, label) for path, label in PAGES if self.viewer.may("GET", path))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _window(text: str) -> timedelta:
    window = parse_duration(text)
    if window <= timedelta(0):
        raise InvalidArgument("the expiry window must be positive; write e.g. 24h")
    return window


def add_session_routes(
    app: FastAPI, forms: CheckedForms, authenticator: Authenticator, audit: AuditRecorder, clock: Clock
) -> None:
    """The public routes: the stylesheet, the login form and its POST, logout."""

    @app.get("/console", include_in_schema=False)
    def console_root() -> Response:
        return RedirectResponse("/console/", status_code=303)

    @app.get("/console/static/console.css", include_in_schema=False)
    def stylesheet() -> Response:
        return Response(STYLESHEET, media_type="text/css", headers={"cache-control": "max-age=300"})

    @app.get("/console/login", include_in_schema=False)
    def login_form(request: Request) -> Response:
        nonce = secrets.token_urlsafe(24)
        cookie = cookie_header(LOGIN_COOKIE, nonce, secure=_secure(request))
        return page("login.html", headers={"set-cookie": cookie}, nav=None, error="", login_csrf=nonce)

    @app.post("/console/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Verify the pasted token as the admin API would and keep it in the session cookie; a token that
        does not verify is refused (and audited), and is never echoed back."""
        form = await read_form(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        presented_nonce = form.get(CSRF_FIELD, "")
        token = form.get("token", "").strip()
        source = request.client.host if request.client else "unknown"
        try:
            if not nonce or not secrets.compare_digest(nonce, presented_nonce):
                raise InvalidArgument(
                    "the login form expired or came from elsewhere; reload it and paste the token again"
                )
            if len(token) > MAX_TOKEN_CHARS or not _JWT_SHAPE.fullmatch(token):
                raise InvalidArgument("that is not a JWT (three base64url parts joined by dots); paste the whole token")
            await asyncio.to_thread(authenticator.authenticate, Presented(source, bearer_token=token))
        except TrustmeshError as err:
            status = transport_status(err)
            if status is None:
                raise
            event = AuditEvent(
                clock.now(),
                Actor(f"unauthenticated:{source}", "oidc"),
                "console.login",
                "POST /console/login",
                "denied",
                {"source": source, "status": status[0]},
                str(err),
            )
            await asyncio.to_thread(audit.record_refusal, event)
            fresh = secrets.token_urlsafe(24)
            cookie = cookie_header(LOGIN_COOKIE, fresh, secure=_secure(request))
            return page(
                "login.html",
                status=status[0],
                headers={"set-cookie": cookie},
                nav=None,
                error=str(err),
                login_csrf=fresh,
            )
        response = RedirectResponse("/console/", status_code=303, headers=SECURITY_HEADERS)
        response.headers.append("set-cookie", cookie_header(COOKIE, token, secure=_secure(request)))
        response.headers.append("set-cookie", cookie_header(LOGIN_COOKIE, "", secure=_secure(request), clear=True))
        return response

    @app.post("/console/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        """Forget the session cookie. Public (an expired session must still be able to log out), but only
        with the session's CSRF token, so no other site can log an officer out."""
        if session_token(request.scope) is not None:
            await forms.read(request, None)
        response = RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)
        response.headers.append("set-cookie", cookie_header(COOKIE, "", secure=_secure(request), clear=True))
        return response


def add_page_routes(app: FastAPI, ops: ConsoleOps, forms: CheckedForms, clock: Clock) -> None:
    """The read-only pages; every one needs a role (:mod:`ca.rbac`), the audit log an auditor's or an officer's."""

    def nav(request: Request, current: str) -> Nav:
        return Nav(viewer(request, forms.csrf), current)

    @app.get("/console/", include_in_schema=False)
    def overview(request: Request) -> Response:
        return page("overview.html", nav=nav(request, "/console/"), summary=ops.inventory.summary())

    @app.get("/console/authorities", include_in_schema=False)
    def authorities(request: Request) -> Response:
        header = nav(request, "/console/authorities")
        may = header.viewer.may
        actions = [
            (action, label, states)
            for action, label, states in (
                ("activate", "Activate", ("prepared",)),
                ("taint", "Taint", ("active", "prepared", "retired")),
                ("revoke", "Revoke", ("tainted",)),
            )
            if may("POST", f"/console/authorities/{{authority_id}}/{action}")
        ]
        return page(
            "authorities.html",
            nav=header,
            now=clock.now(),
            views=ops.authorities.list(),
            timeline=ops.inventory.timeline(),
            actions=actions,
            may_prepare=may("POST", "/console/authorities/prepare"),
            may_rotate=may("POST", "/console/authorities/rotate"),
        )

    @app.get("/console/svids", include_in_schema=False)
    def svids(
        request: Request, window: str = DEFAULT_WINDOW, expiring: bool = False, cursor: str | None = None
    ) -> Response:
        header = nav(request, "/console/svids")
        span = _window(window)
        found = ops.inventory.svids(
            SvidFilter(expiring_within=span if expiring else None), limit=SVID_PAGE, cursor=cursor
        )
        now = clock.now()
        return page(
            "svids.html",
            nav=header,
            now=now,
            page=found,
            window=window,
            expiring=expiring,
            soon_before=now + span,
            may_revoke=header.viewer.may("POST", "/console/svids/revoke"),
        )

    @app.get("/console/agents", include_in_schema=False)
    def agents(request: Request) -> Response:
        return page("agents.html", nav=nav(request, "/console/agents"), now=clock.now(), agents=ops.agents.list())

    @app.get("/console/federation", include_in_schema=False)
    def federation(request: Request) -> Response:
        relationships = ops.federation.list()
        return page(
            "federation.html", nav=nav(request, "/console/federation"), now=clock.now(), relationships=relationships
        )

    @app.get("/console/audit", include_in_schema=False)
    def audit_log(request: Request) -> Response:
        records = ops.audit_log.list(AuditQuery(), newest_first=True, limit=AUDIT_RECORDS)
        return page(
            "audit.html", nav=nav(request, "/console/audit"), verification=ops.audit_log.verify(), records=records
        )
