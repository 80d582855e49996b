"""Mounting the console on an admin app (:func:`ca.http_api.create_admin_app`), and how its errors look."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.responses import Response

from ca.admin_auth import Authenticator
from ca.admin_guard import AuditRecorder
from ca.console.actions import add_action_routes
from ca.console.forms import CheckedForms
from ca.console.pages import ConsoleOps, add_page_routes, add_session_routes
from ca.console.requests import page
from ca.console.session import CsrfTokens
from spiffe_core.clock import Clock
from spiffe_core.errors import transport_status

log = logging.getLogger(__name__)


def add_console_routes(
    app: FastAPI, ops: ConsoleOps, *, authenticator: Authenticator, audit: AuditRecorder, clock: Clock
) -> None:
    """Every ``/console/…`` route; ``authenticator`` and ``audit`` are the listener's own, so the login
    form accepts exactly the tokens the API does and its refusals land in the same audit log."""
    forms = CheckedForms(CsrfTokens(), audit, clock)
    add_session_routes(app, forms, authenticator, audit, clock)
    add_page_routes(app, ops, forms, clock)
    add_action_routes(app, ops.authorities, forms)


def error_page(err: Exception) -> Response:
    """A domain error on a console page, as a page: its one-line message and status; anything else is
    logged and answered 500 without its detail."""
    status = transport_status(err)
    if status is None:
        log.exception("internal error while serving a console page", exc_info=err)
        return page("error.html", status=500, nav=None, message="internal error; see the CA's log")
    return page("error.html", status=status[0], nav=None, message=str(err))
