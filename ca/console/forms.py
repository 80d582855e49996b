"""The CSRF gate of the console's POSTs: a form whose token does not match the caller's session is
refused (403) before its route does anything, and the refusal is audited like the admin guard's."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from fastapi import Request

from ca.admin_guard import AuditRecorder
from ca.console.requests import csrf_binding, read_form
from ca.console.session import CSRF_FIELD, CsrfTokens
from ca.rbac import policy_for
from ca.store.records import Actor, AuditEvent
from spiffe_core.clock import Clock
from spiffe_core.errors import NotAuthorized

CSRF_REFUSAL = "the form's CSRF token is missing or is not this session's; reload the page and submit it again"


class CheckedForms:
    """Reads console forms and refuses those without their session's CSRF token."""

    def __init__(self, csrf: CsrfTokens, audit: AuditRecorder, clock: Clock) -> None:
        self.csrf = csrf
        self._audit = audit
        self._clock = clock

    async def read(self, request: Request, actor: Actor | None) -> Mapping[str, str]:
        """The form, once its CSRF token proved it came from a page of this session; NotAuthorized else."""
        form = await read_form(request)
        if self.csrf.check(csrf_binding(request, actor), form.get(CSRF_FIELD)):
            return form
        template = str(getattr(request.scope.get("route"), "path", request.url.path))
        policy = policy_for(request.method, template)
        client = request.client
        event = AuditEvent(
            self._clock.now(),
            actor or Actor(f"unauthenticated:{client.host if client else 'unknown'}", "oidc"),
            policy.action if policy is not None else "admin_api.request",
            f"{request.method} {template}",
            "denied",
            {"source": client.host if client else "unknown", "status": 403},
            CSRF_REFUSAL,
        )
        await asyncio.to_thread(self._audit.record_refusal, event)
        raise NotAuthorized(CSRF_REFUSAL)
