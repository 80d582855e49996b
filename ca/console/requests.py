"""What every console route needs from its request: who is looking (:class:`Viewer`, with the CSRF
token of their session and what the role matrix lets them do), the form a POST carries, and the page
answered with the console's security headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import HTMLResponse

from ca.console.render import SECURITY_HEADERS, render
from ca.console.session import CsrfTokens, session_token
from ca.http_caller import caller, caller_roles
from ca.rbac import policy_for
from ca.store.records import Actor
from spiffe_core.errors import InvalidArgument

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 16  # the largest console form has five


@dataclass(frozen=True, slots=True)
class Viewer:
    """The authenticated caller of a console page. ``has_session``: they came with the console cookie
    (so logging out means something)."""

    actor: Actor
    roles: frozenset[str]
    csrf: str = field(repr=False)
    has_session: bool

    def may(self, method: str, path: str) -> bool:
        """Whether the role matrix lets this caller call ``method path`` (a route template)."""
        if self.actor.role == "break-glass":
            return True
        policy = policy_for(method, path)
        return policy is not None and policy.allowed_role(self.roles) is not None


def csrf_binding(request: Request, actor: Actor | None) -> str:
    """What a session's CSRF token is bound to: the token in its cookie, else the caller's name (an
    mTLS admin or the local socket, who have no cookie to steal)."""
    token = session_token(request.scope)
    if token is not None:
        return "cookie:" + token
    return "" if actor is None else "caller:" + actor.name


def viewer(request: Request, csrf: CsrfTokens) -> Viewer:
    actor = caller(request)
    return Viewer(
        actor=actor,
        roles=caller_roles(request),
        csrf=csrf.issue(csrf_binding(request, actor)),
        has_session=session_token(request.scope) is not None,
    )


async def read_form(request: Request) -> Mapping[str, str]:
    """The fields of a urlencoded form (the first value of each); InvalidArgument for another body. The
    app bounds the body's size; the field count is bounded here."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise InvalidArgument(f"a console form must be posted as {FORM_TYPE}, not {content_type or 'nothing'}")
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise InvalidArgument(f"a console form has at most {MAX_FORM_FIELDS} fields") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def page(
    template: str, *, status: int = 200, headers: Mapping[str, str] | None = None, **context: object
) -> HTMLResponse:
    """A rendered page with the console's security headers (and ``headers``, e.g. a Set-Cookie)."""
    response = HTMLResponse(render(template, **context), status_code=status, headers=SECURITY_HEADERS)
    for name, value in (headers or {}).items():
        response.headers.append(name, value)
    return response
