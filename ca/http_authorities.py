"""The officer's HTTP edge for authorities, leaf revocation and CRLs (DESIGN §3 "Authorities", "Leaf
revocation"; RFC 5280 §5 for the CRLs).

Called by :func:`ca.http_api.create_admin_app` (the admin API: everything here) and
:func:`ca.http_api.create_health_app` (the public listener: only ``GET /crl/{id}.crl``; CRLs are public,
relying parties fetch them without credentials). Each route decodes its body, calls one method of
:class:`AuthorityOps` (:class:`ca.authority_ops.AuthorityOperations`), and encodes the result. Every
change takes ``dry_run``: the same checks and counts, nothing written.
"""

from __future__ import annotations

import string
from datetime import datetime
from typing import Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ca.authority_ops import AuthorityView, ChangeReport
from ca.crl import parse_reason
from ca.http_caller import Caller
from ca.store.records import Actor, AuthorityKind
from spiffe_core.errors import InvalidArgument, TrustmeshError, transport_status
from spiffe_core.spiffe_id import SpiffeId

CRL_MEDIA_TYPE = "application/pkix-crl"  # RFC 2585 §4.2


class AuthorityOps(Protocol):
    """The authority use cases this edge calls (:class:`ca.authority_ops.AuthorityOperations`)."""

    def list(self) -> tuple[AuthorityView, ...]: ...
    def show(self, authority_id: str) -> AuthorityView: ...
    def prepare(self, kind: AuthorityKind, actor: Actor, *, dry_run: bool = False) -> ChangeReport: ...
    def activate(
        self, authority_id: str, actor: Actor, *, dry_run: bool = False, force: bool = False
    ) -> ChangeReport: ...
    def taint(self, authority_id: str, actor: Actor, *, dry_run: bool = False) -> ChangeReport: ...
    def revoke(self, authority_id: str, actor: Actor, *, dry_run: bool = False) -> ChangeReport: ...
    def rotate_now(self, kind: AuthorityKind, actor: Actor, *, dry_run: bool = False) -> ChangeReport: ...
    def revoke_svids(
        self,
        actor: Actor,
        *,
        serial: int | None = None,
        spiffe_id: SpiffeId | None = None,
        reason: x509.ReasonFlags | None = None,
        dry_run: bool = False,
    ) -> ChangeReport: ...
    def get_crl(self, authority_id: str) -> bytes:
        """The DER CRL signed by ``authority_id``; raises NotFound when none is published."""
        ...

    def list_crls(self) -> tuple[tuple[str, bytes], ...]:
        """Every published CRL as (signing authority ID, DER)."""
        ...


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DryRunBody(_Body):
    dry_run: bool = Field(default=False, description="check and count only; change nothing")


class KindBody(DryRunBody):
    kind: Literal["x509", "jwt"]


class ActivateBody(DryRunBody):
    force: bool = Field(default=False, description="activate before the prepared one was published a refresh hint")


class RevocationBody(DryRunBody):
    serial: str | None = Field(default=None, description="serial number in hex of one X509-SVID")
    spiffe_id: str | None = Field(default=None, description="revoke every live X509-SVID of this SPIFFE ID")
    reason: str | None = Field(default=None, description="RFC 5280 reason in kebab case, e.g. key-compromise")


class AuthorityReply(BaseModel):
    id: str
    kind: str
    state: str
    key_type: str
    not_before: datetime
    not_after: datetime
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    tainted_at: datetime | None
    revoked_at: datetime | None
    live_svids: int
    signed_until: datetime | None
    certificate_pem: str | None = Field(description="X.509 authorities only")
    upstream: str | None = Field(description="X.509 authorities only: the subject of the certificate's issuer")


class AuthorityListReply(BaseModel):
    authorities: list[AuthorityReply]


class StateChangeReply(BaseModel):
    authority_id: str
    kind: str
    before: str | None = Field(description="None: the authority is created")
    after: str | None = Field(description="None: the authority is removed")


class ChangeReply(BaseModel):
    action: str
    dry_run: bool
    changes: list[StateChangeReply]
    svids_affected: int
    agents_affected: list[str]
    bundle_x509: list[str]
    bundle_jwt: list[str]
    revoked_serials: list[str] = Field(description="lowercase hex")
    notes: list[str]


class CrlReply(BaseModel):
    authority_id: str
    this_update: datetime
    next_update: datetime | None
    number: int | None
    revoked_count: int
    pem: str


class CrlListReply(BaseModel):
    crls: list[CrlReply]


def _authority_reply(view: AuthorityView) -> AuthorityReply:
    record = view.record
    certificate = None if record.certificate_der is None else x509.load_der_x509_certificate(record.certificate_der)
    return AuthorityReply(
        id=record.id,
        kind=record.kind.value,
        state=record.state.value,
        key_type=record.key_type.value,
        not_before=record.not_before,
        not_after=record.not_after,
        created_at=record.created_at,
        activated_at=record.activated_at,
        retired_at=record.retired_at,
        tainted_at=record.tainted_at,
        revoked_at=record.revoked_at,
        live_svids=view.live_svids,
        signed_until=view.signed_until,
        certificate_pem=None if certificate is None else certificate.public_bytes(serialization.Encoding.PEM).decode(),
        upstream=None if certificate is None else certificate.issuer.rfc4514_string(),
    )


def _change_reply(report: ChangeReport) -> ChangeReply:
    return ChangeReply(
        action=report.action,
        dry_run=report.dry_run,
        changes=[
            StateChangeReply(
                authority_id=c.authority_id,
                kind=c.kind.value,
                before=None if c.before is None else c.before.value,
                after=None if c.after is None else c.after.value,
            )
            for c in report.changes
        ],
        svids_affected=report.svids_affected,
        agents_affected=[str(a) for a in report.agents_affected],
        bundle_x509=list(report.bundle_x509),
        bundle_jwt=list(report.bundle_jwt),
        revoked_serials=[format(s, "x") for s in report.revoked_serials],
        notes=list(report.notes),
    )


def _crl_reply(authority_id: str, der: bytes) -> CrlReply:
    crl = x509.load_der_x509_crl(der)
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return CrlReply(
        authority_id=authority_id,
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        number=number,
        revoked_count=len(crl),
        pem=crl.public_bytes(serialization.Encoding.PEM).decode(),
    )


def parse_serial(text: str) -> int:
    """An X509-SVID serial number given in hex (``0x`` prefix and ``:`` separators allowed, as
    ``openssl x509 -serial`` and ``trustmesh-ca x509 mint`` print them); raises InvalidArgument."""
    digits = text.strip().replace(":", "").lower().removeprefix("0x")
    if not digits or any(c not in string.hexdigits for c in digits):
        raise InvalidArgument(
            f"serial {text!r} is not a hexadecimal number; give it as `trustmesh-ca x509 mint` prints it, "
            "e.g. '3f9a0c1d' (a 0x prefix and colons are fine)"
        )
    serial = int(digits, 16)
    if serial == 0:
        raise InvalidArgument("serial 0 cannot name an X509-SVID (RFC 5280 §4.1.2.2 serials are positive)")
    return serial


def add_authority_routes(app: FastAPI, ops: AuthorityOps) -> None:
    """The admin routes: list and show authorities, the lifecycle changes, SVID revocation, CRL listing.
    Errors are left to the app's TrustmeshError handler."""

    @app.get("/v1/authorities")
    def list_authorities() -> AuthorityListReply:
        return AuthorityListReply(authorities=[_authority_reply(view) for view in ops.list()])

    @app.get("/v1/authorities/{authority_id}")
    def show_authority(authority_id: str) -> AuthorityReply:
        return _authority_reply(ops.show(authority_id))

    @app.post("/v1/authorities/prepare")
    def prepare_authority(body: KindBody, actor: Caller) -> ChangeReply:
        return _change_reply(ops.prepare(AuthorityKind(body.kind), actor, dry_run=body.dry_run))

    @app.post("/v1/authorities/rotate")
    def rotate_authority(body: KindBody, actor: Caller) -> ChangeReply:
        return _change_reply(ops.rotate_now(AuthorityKind(body.kind), actor, dry_run=body.dry_run))

    @app.post("/v1/authorities/{authority_id}/activate")
    def activate_authority(authority_id: str, body: ActivateBody, actor: Caller) -> ChangeReply:
        return _change_reply(ops.activate(authority_id, actor, dry_run=body.dry_run, force=body.force))

    @app.post("/v1/authorities/{authority_id}/taint")
    def taint_authority(authority_id: str, body: DryRunBody, actor: Caller) -> ChangeReply:
        return _change_reply(ops.taint(authority_id, actor, dry_run=body.dry_run))

    @app.post("/v1/authorities/{authority_id}/revoke")
    def revoke_authority(authority_id: str, body: DryRunBody, actor: Caller) -> ChangeReply:
        return _change_reply(ops.revoke(authority_id, actor, dry_run=body.dry_run))

    @app.post("/v1/revocations")
    def revoke_svids(body: RevocationBody, actor: Caller) -> ChangeReply:
        report = ops.revoke_svids(
            actor,
            serial=None if body.serial is None else parse_serial(body.serial),
            spiffe_id=None if body.spiffe_id is None else SpiffeId.parse(body.spiffe_id),
            reason=None if body.reason is None else parse_reason(body.reason),
            dry_run=body.dry_run,
        )
        return _change_reply(report)

    @app.get("/v1/crls")
    def list_crls() -> CrlListReply:
        return CrlListReply(crls=[_crl_reply(authority_id, der) for authority_id, der in ops.list_crls()])


def add_crl_routes(app: FastAPI, ops: AuthorityOps) -> None:
    """``GET /crl/{authority_id}.crl``: the DER CRL, unauthenticated. It maps its own errors, since the
    public listener has no TrustmeshError handler."""

    @app.get("/crl/{authority_id}.crl", response_model=None)
    def get_crl(authority_id: str) -> Response:
        try:
            der = ops.get_crl(authority_id)
        except TrustmeshError as err:
            status = transport_status(err)
            if status is None:
                raise
            return JSONResponse({"error": str(err)}, status_code=status[0])
        return Response(der, media_type=CRL_MEDIA_TYPE)
