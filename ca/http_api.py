"""The CA's HTTP edges: health and metrics (TCP), and the admin API (the local Unix socket and, when
configured, HTTPS; docs/admin-api.md).

Routes are thin: decode the JSON body, call one method of :class:`CaOperations`, encode the result.
Domain errors become HTTP statuses through :func:`spiffe_core.errors.transport_status`; anything else
is logged and answered 500 without its detail. One app factory serves both admin listeners; what
differs is who may call: the listener's authenticator and the route-by-role matrix (:mod:`ca.rbac`),
enforced by :class:`ca.admin_guard.AdminGuard` before any route runs. The OpenAPI page (``/docs``)
is served with its own assets (``fastapi-offline``), so it works where no CDN is reachable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal, Protocol

from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from ca.admin_auth import Authenticator
from ca.admin_guard import AdminGuard, AuditRecorder
from ca.attestation import GeneratedJoinToken
from ca.audit import Issuance
from ca.console.app import add_console_routes, error_page
from ca.console.pages import ConsoleOps
from ca.console.session import is_console_path
from ca.entries import check_operator_svid
from ca.federation.http import RelationshipOps, add_federation_routes
from ca.http_agents import AgentOps, add_agent_routes
from ca.http_audit import AuditOps, add_audit_routes
from ca.http_authorities import AuthorityOps, add_authority_routes, add_crl_routes
from ca.http_caller import Caller, CallerRoles
from ca.http_inventory import InventoryOps, add_inventory_routes
from ca.http_mappings import MappingOps, add_mapping_routes
from ca.issuance import IssuedX509Svid, JwtSvidRequest, X509SvidRequest
from ca.rbac import Role
from ca.store.records import Actor, EntrySpec, RegistrationEntry
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import TrustmeshError, transport_status
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

log = logging.getLogger(__name__)


class CaOperations(Protocol):
    def get_bundle(self) -> Bundle: ...
    def mint_x509_svids(self, requests: Sequence[X509SvidRequest], issuance: Issuance) -> list[IssuedX509Svid]: ...
    def mint_jwt_svid(self, request: JwtSvidRequest, actor: Actor) -> tuple[str, datetime]: ...
    def check_ready(self) -> None:
        """Raise a TrustmeshError saying why the CA cannot serve (database down, no active authority)."""
        ...


class EntryOperations(Protocol):
    """Registration entry use cases (:class:`ca.entries.RegistrationEntries`)."""

    def create(self, spec: EntrySpec, actor: Actor, *, may_manage_admin: bool = True) -> RegistrationEntry: ...
    def update(
        self,
        entry_id: str,
        spec: EntrySpec,
        actor: Actor,
        expected_revision: int | None = None,
        *,
        may_manage_admin: bool = True,
    ) -> RegistrationEntry: ...
    def delete(self, entry_id: str, actor: Actor, *, may_manage_admin: bool = True) -> RegistrationEntry: ...
    def get(self, entry_id: str) -> RegistrationEntry: ...
    def list(
        self, parent_id: SpiffeId | None = None, spiffe_id: SpiffeId | None = None
    ) -> tuple[RegistrationEntry, ...]: ...


class JoinTokenOperations(Protocol):
    """Join token generation (:class:`ca.attestation.JoinTokens`)."""

    def generate(
        self, ttl: timedelta, actor: Actor, node_name: str | None = None, *, replace: bool = False
    ) -> GeneratedJoinToken: ...


DEFAULT_JOIN_TOKEN_TTL_SECONDS = 3600
# Largest request body the admin API reads (an entry or a CSR is a few KiB).
MAX_BODY_BYTES = 1024 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class X509MintBody(_Body):
    csr_pem: str = Field(description="PKCS#10 CSR, PEM; only its public key is used")
    spiffe_id: str
    dns_names: list[str] = Field(default_factory=list)
    ttl_seconds: int | None = None


class X509MintReply(BaseModel):
    spiffe_id: str
    serial: str
    expires_at: datetime
    cert_chain_pem: str
    bundle_pem: str


class JwtMintBody(_Body):
    spiffe_id: str
    audience: list[str]
    ttl_seconds: int | None = None


class JwtMintReply(BaseModel):
    token: str
    expires_at: datetime


class EntryBody(_Body):
    spiffe_id: str
    parent_id: str
    selectors: list[str] = Field(description="'type:value', all must match")
    dns_names: list[str] = Field(default_factory=list)
    x509_svid_ttl_seconds: int | None = Field(default=None, description="None: the CA's default")
    jwt_svid_ttl_seconds: int | None = Field(default=None, description="None: the CA's default")
    federates_with: list[str] = Field(default_factory=list, description="trust domain names")
    admin: bool = False
    hint: str = ""
    owner: str = Field(default="", description="who to call about this workload: a team, an address, a pager alias")


class EntryUpdateBody(EntryBody):
    revision: int | None = Field(default=None, description="refuse the update unless the entry is still at it")


class EntryReply(BaseModel):
    id: str
    spiffe_id: str
    parent_id: str
    selectors: list[str]
    dns_names: list[str]
    x509_svid_ttl_seconds: int | None
    jwt_svid_ttl_seconds: int | None
    federates_with: list[str]
    admin: bool
    hint: str
    owner: str
    revision: int
    created_at: datetime
    updated_at: datetime


class EntryListReply(BaseModel):
    entries: list[EntryReply]


class JoinTokenBody(_Body):
    ttl_seconds: int = DEFAULT_JOIN_TOKEN_TTL_SECONDS
    node_name: str | None = Field(default=None, description="last path segment of the agent ID; default a UUID")
    replace: bool = Field(
        default=False, description="even if an agent with this ID is attested: the new node replaces it"
    )


class JoinTokenReply(BaseModel):
    token: str
    spiffe_id: str
    expires_at: datetime


def _entry_spec(body: EntryBody) -> EntrySpec:
    return EntrySpec(
        spiffe_id=SpiffeId.parse(body.spiffe_id),
        parent_id=SpiffeId.parse(body.parent_id),
        selectors=frozenset(Selector.parse(s) for s in body.selectors),
        dns_names=tuple(body.dns_names),
        x509_ttl=_ttl(body.x509_svid_ttl_seconds),
        jwt_ttl=_ttl(body.jwt_svid_ttl_seconds),
        federates_with=frozenset(TrustDomain.parse(td) for td in body.federates_with),
        admin=body.admin,
        hint=body.hint,
        owner=body.owner,
    )


def _seconds(ttl: timedelta | None) -> int | None:
    return None if ttl is None else int(ttl.total_seconds())


def _entry_reply(entry: RegistrationEntry) -> EntryReply:
    spec = entry.spec
    return EntryReply(
        id=entry.id,
        spiffe_id=str(spec.spiffe_id),
        parent_id=str(spec.parent_id),
        selectors=sorted(str(s) for s in spec.selectors),
        dns_names=list(spec.dns_names),
        x509_svid_ttl_seconds=_seconds(spec.x509_ttl),
        jwt_svid_ttl_seconds=_seconds(spec.jwt_ttl),
        federates_with=sorted(td.name for td in spec.federates_with),
        admin=spec.admin,
        hint=spec.hint,
        owner=spec.owner,
        revision=entry.revision,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
    )


def _ttl(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def error_reply(err: Exception) -> JSONResponse:
    """A domain error as the HTTP APIs answer it: ``{"error": message}`` with its status; anything else
    is logged and answered 500 without its detail."""
    status = transport_status(err)
    if status is None:
        log.exception("internal error while serving a request", exc_info=err)
        return JSONResponse({"error": "internal error; see the CA's log"}, status_code=500)
    return JSONResponse({"error": str(err)}, status_code=status[0])


def _add_health_routes(app: FastAPI, ops: CaOperations, registry: CollectorRegistry) -> None:
    @app.get("/live", response_class=PlainTextResponse)
    def live() -> str:
        return "ok\n"

    @app.get("/ready", response_class=PlainTextResponse)
    def ready() -> Response:
        try:
            ops.check_ready()
        except TrustmeshError as err:
            return PlainTextResponse(f"not ready: {err}\n", status_code=503)
        return PlainTextResponse("ready\n")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create_health_app(
    ops: CaOperations, registry: CollectorRegistry, *, authorities: AuthorityOps | None = None
) -> FastAPI:
    """The public TCP listener: only liveness, readiness, metrics and (given ``authorities``) the CRLs."""
    app = FastAPI(title="trustmesh CA health", docs_url=None, redoc_url=None, openapi_url=None)
    _add_health_routes(app, ops, registry)
    if authorities is not None:
        add_crl_routes(app, authorities)
    return app


def _add_entry_routes(
    app: FastAPI, entries: EntryOperations, join_tokens: JoinTokenOperations, admin_entry_role: Role
) -> None:
    """The operator's routes. Admin entries need the role they confer (you cannot grant what you do not
    hold; :mod:`ca.entries` checks and audits it)."""

    @app.post("/v1/entries", status_code=201)
    def create_entry(body: EntryBody, actor: Caller, roles: CallerRoles) -> EntryReply:
        spec = _entry_spec(body)
        return _entry_reply(entries.create(spec, actor, may_manage_admin=admin_entry_role in roles))

    @app.get("/v1/entries")
    def list_entries(parent_id: str | None = None, spiffe_id: str | None = None) -> EntryListReply:
        found = entries.list(
            parent_id=None if parent_id is None else SpiffeId.parse(parent_id),
            spiffe_id=None if spiffe_id is None else SpiffeId.parse(spiffe_id),
        )
        return EntryListReply(entries=[_entry_reply(entry) for entry in found])

    @app.get("/v1/entries/{entry_id}")
    def get_entry(entry_id: str) -> EntryReply:
        return _entry_reply(entries.get(entry_id))

    @app.put("/v1/entries/{entry_id}")
    def update_entry(entry_id: str, body: EntryUpdateBody, actor: Caller, roles: CallerRoles) -> EntryReply:
        may_manage_admin = admin_entry_role in roles
        return _entry_reply(
            entries.update(entry_id, _entry_spec(body), actor, body.revision, may_manage_admin=may_manage_admin)
        )

    @app.delete("/v1/entries/{entry_id}")
    def delete_entry(entry_id: str, actor: Caller, roles: CallerRoles) -> EntryReply:
        return _entry_reply(entries.delete(entry_id, actor, may_manage_admin=admin_entry_role in roles))

    @app.post("/v1/join-tokens", status_code=201)
    def generate_join_token(body: JoinTokenBody, actor: Caller) -> JoinTokenReply:
        generated = join_tokens.generate(
            timedelta(seconds=body.ttl_seconds), actor, body.node_name, replace=body.replace
        )
        return JoinTokenReply(token=generated.token, spiffe_id=str(generated.agent_id), expires_at=generated.expires_at)


def create_admin_app(
    ops: CaOperations,
    registry: CollectorRegistry,
    *,
    entries: EntryOperations,
    join_tokens: JoinTokenOperations,
    authorities: AuthorityOps | None = None,
    agents: AgentOps | None = None,
    federation: RelationshipOps | None = None,
    mappings: MappingOps | None = None,
    inventory: InventoryOps | None = None,
    authenticator: Authenticator,
    audit: AuditRecorder,
    clock: Clock,
    admin_entry_role: Role = Role.OPERATOR,
    audit_log: AuditOps | None = None,
) -> FastAPI:
    """The admin API the CLI talks to, for one listener: ``authenticator`` says who calls on it (the
    Unix socket's break-glass caller, or remote callers over HTTPS), ``audit`` records refusals, and
    ``audit_log`` (when given) serves the audit log's routes. Given every domain object it shows, the
    web console (:mod:`ca.console`) is served too, under ``/console/``."""
    app = FastAPIOffline(
        title="trustmesh CA admin API",
        version="1",
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        max_body_size=MAX_BODY_BYTES,
    )
    app.add_middleware(AdminGuard, routes=app.router.routes, authenticator=authenticator, audit=audit, clock=clock)
    _add_health_routes(app, ops, registry)
    app.add_exception_handler(
        TrustmeshError, lambda req, err: error_page(err) if is_console_path(req.url.path) else error_reply(err)
    )

    @app.exception_handler(HTTPException)
    def http_error(_req: Request, err: HTTPException) -> JSONResponse:  # 404, 405, 413 in the API's own shape
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    def bad_request(_req: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": f"malformed request: {problems}"}, status_code=400)

    @app.get("/v1/bundle", response_model=None)
    def get_bundle(format: Literal["spiffe", "pem"] = "spiffe") -> Response:  # `format`: the query name
        bundle = ops.get_bundle()
        if format == "pem":
            return Response(bundle.x509_authorities_pem(), media_type="application/x-pem-file")
        return Response(bundle.to_json(), media_type="application/json")

    @app.post("/v1/x509-svids")
    def mint_x509(body: X509MintBody, actor: Caller) -> X509MintReply:
        request = X509SvidRequest(
            csr=body.csr_pem.encode(),
            spiffe_id=SpiffeId.parse(body.spiffe_id),
            dns_names=tuple(body.dns_names),
            ttl=_ttl(body.ttl_seconds),
        )
        check_operator_svid(request.spiffe_id, request.dns_names)
        (issued,) = ops.mint_x509_svids([request], Issuance(actor))
        return X509MintReply(
            spiffe_id=str(issued.spiffe_id),
            serial=format(issued.serial, "x"),
            expires_at=issued.not_after,
            cert_chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in issued.cert_chain).decode(),
            bundle_pem=ops.get_bundle().x509_authorities_pem().decode(),
        )

    @app.post("/v1/jwt-svids")
    def mint_jwt(body: JwtMintBody, actor: Caller) -> JwtMintReply:
        spiffe_id = SpiffeId.parse(body.spiffe_id)
        check_operator_svid(spiffe_id)
        request = JwtSvidRequest(spiffe_id, tuple(body.audience), _ttl(body.ttl_seconds))
        token, expires_at = ops.mint_jwt_svid(request, actor)
        return JwtMintReply(token=token, expires_at=expires_at)

    _add_entry_routes(app, entries, join_tokens, admin_entry_role)
    if authorities is not None:
        add_authority_routes(app, authorities)
        add_crl_routes(app, authorities)
    if agents is not None:
        add_agent_routes(app, agents)
    if federation is not None:
        add_federation_routes(app, federation)
    if mappings is not None:
        add_mapping_routes(app, mappings)
    if audit_log is not None:
        add_audit_routes(app, audit_log)
    if inventory is not None:
        add_inventory_routes(app, inventory, clock)
    if (
        authorities is not None
        and inventory is not None
        and agents is not None
        and federation is not None
        and audit_log is not None
    ):
        console = ConsoleOps(authorities, inventory, agents, federation, audit_log)
        add_console_routes(app, console, authenticator=authenticator, audit=audit, clock=clock)
    return app
