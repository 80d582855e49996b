"""The officer's actions in the console: prepare, activate, rotate, taint and revoke authorities, and
revoke X509-SVIDs. Each route answers a POST without ``confirm=yes`` with the operation's dry run (the
same :class:`~ca.authority_ops.ChangeReport` ``--dry-run`` prints) and a button that posts it again with
``confirm=yes``; only that second POST changes anything. Both are security-officer routes in the role
matrix, so an auditor's POST is refused by the admin guard (403, audited) before it gets here, and both
need the session's CSRF token (:class:`~ca.console.forms.CheckedForms`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ca.authority_ops import ChangeReport
from ca.console.forms import CheckedForms
from ca.console.pages import Nav
from ca.console.requests import page, viewer
from ca.crl import parse_reason
from ca.http_authorities import AuthorityOps, parse_serial
from ca.http_caller import caller
from ca.store.records import AuthorityKind
from spiffe_core.errors import InvalidArgument

Operation = Callable[[bool], ChangeReport]  # dry_run -> what it did (or would do)


def _kind(form: Mapping[str, str]) -> AuthorityKind:
    try:
        return AuthorityKind(form.get("kind", ""))
    except ValueError:
        raise InvalidArgument("kind must be x509 or jwt") from None


def add_action_routes(app: FastAPI, ops: AuthorityOps, forms: CheckedForms) -> None:
    """The six officer POSTs, mirroring the admin API's authority and revocation routes."""

    async def act(
        request: Request, title: str, back: str, kept: tuple[str, ...], operation: Callable[..., ChangeReport]
    ) -> Response:
        """Read the checked form, run ``operation(form, actor, dry_run=...)``, show its report."""
        actor = caller(request)
        form = await forms.read(request, actor)
        confirmed = form.get("confirm") == "yes"
        report = await run_in_threadpool(operation, form, actor, dry_run=not confirmed)
        return page(
            "change.html",
            nav=Nav(viewer(request, forms.csrf), back),
            title=title,
            report=report,
            action=request.url.path,
            fields=[(name, form[name]) for name in kept if name in form],
            back=back,
        )

    @app.post("/console/authorities/prepare", include_in_schema=False)
    async def prepare(request: Request) -> Response:
        return await act(
            request,
            "Prepare the next authority",
            "/console/authorities",
            ("kind",),
            lambda form, actor, dry_run: ops.prepare(_kind(form), actor, dry_run=dry_run),
        )

    @app.post("/console/authorities/rotate", include_in_schema=False)
    async def rotate(request: Request) -> Response:
        return await act(
            request,
            "Rotate now",
            "/console/authorities",
            ("kind",),
            lambda form, actor, dry_run: ops.rotate_now(_kind(form), actor, dry_run=dry_run),
        )

    @app.post("/console/authorities/{authority_id}/activate", include_in_schema=False)
    async def activate(request: Request, authority_id: str) -> Response:
        return await act(
            request,
            f"Activate {authority_id}",
            "/console/authorities",
            (),
            lambda _form, actor, dry_run: ops.activate(authority_id, actor, dry_run=dry_run),
        )

    @app.post("/console/authorities/{authority_id}/taint", include_in_schema=False)
    async def taint(request: Request, authority_id: str) -> Response:
        return await act(
            request,
            f"Taint {authority_id}",
            "/console/authorities",
            (),
            lambda _form, actor, dry_run: ops.taint(authority_id, actor, dry_run=dry_run),
        )

    @app.post("/console/authorities/{authority_id}/revoke", include_in_schema=False)
    async def revoke(request: Request, authority_id: str) -> Response:
        return await act(
            request,
            f"Revoke {authority_id}",
            "/console/authorities",
            (),
            lambda _form, actor, dry_run: ops.revoke(authority_id, actor, dry_run=dry_run),
        )

    @app.post("/console/svids/revoke", include_in_schema=False)
    async def revoke_svid(request: Request) -> Response:
        return await act(
            request,
            "Revoke an X509-SVID",
            "/console/svids",
            ("serial", "reason"),
            lambda form, actor, dry_run: ops.revoke_svids(
                actor,
                serial=parse_serial(form.get("serial", "")),
                reason=parse_reason(form["reason"]) if form.get("reason") else None,
                dry_run=dry_run,
            ),
        )
