"""The officer's HTTP edge (ca/http_authorities.py) on the real admin and health apps, over a fake
AuthorityOps: which route calls which use case with which arguments, how replies are encoded, and how
domain errors come back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ca.authority import AuthorityState, authority_id_for
from ca.authority_ops import AuthorityView, ChangeReport, StateChange
from ca.crl import RevokedSerial, build_crl
from ca.http_api import create_admin_app, create_health_app
from ca.rbac import BREAK_GLASS_ROLE
from ca.store.records import Actor, AuthorityKind, AuthorityRecord
from ca.upstream import CaSubject, SelfSignedUpstream
from spiffe_core.errors import FailedPrecondition, NotFound
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.admin import LocalAdmin, RecordedAudit
from tests.support.clock import FakeClock

TD = TrustDomain("example.org")
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")
# The CA, entry and join-token routes are not exercised here.
UNUSED: Any = object()


@dataclass(frozen=True)
class Pki:
    x509_record: AuthorityRecord
    jwt_record: AuthorityRecord
    crl_der: bytes


def make_pki() -> Pki:
    key = generate_private_key(KeyType.EC_P256)
    authority_id = authority_id_for(key.public_key())
    cert, _ = SelfSignedUpstream().mint_x509_ca(
        private_key=key,
        trust_domain=TD,
        subject=CaSubject().name_for(TD, authority_id),
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(days=1),
    )
    crl = build_crl(
        issuer=cert,
        issuer_key=key,
        revoked=(RevokedSerial(0xABC, NOW, x509.ReasonFlags.key_compromise),),
        this_update=NOW - timedelta(minutes=1),
        next_update=NOW + timedelta(hours=24),
        number=42,
    )
    common: dict[str, Any] = {
        "trust_domain": TD,
        "key_type": KeyType.EC_P256,
        "key_ref": "ref",
        "public_key_der": b"",
        "not_before": NOW - timedelta(hours=1),
        "not_after": NOW + timedelta(days=1),
        "created_at": NOW - timedelta(hours=1),
    }
    return Pki(
        x509_record=AuthorityRecord(
            id=authority_id,
            kind=AuthorityKind.X509,
            state=AuthorityState.ACTIVE,
            certificate_der=cert.public_bytes(serialization.Encoding.DER),
            activated_at=NOW - timedelta(hours=1),
            **common,
        ),
        jwt_record=AuthorityRecord(id="jwtkey1", kind=AuthorityKind.JWT, state=AuthorityState.PREPARED, **common),
        crl_der=crl.public_bytes(serialization.Encoding.DER),
    )


PKI = make_pki()
REPORT = ChangeReport(
    action="taint",
    dry_run=True,
    changes=(StateChange("abc123", AuthorityKind.X509, AuthorityState.RETIRED, AuthorityState.TAINTED),),
    svids_affected=3,
    agents_affected=(AGENT,),
    bundle_x509=("abc123", "def456"),
    bundle_jwt=("jwtkey1",),
    revoked_serials=(0xDEADBEEF,),
)


@dataclass
class FakeAuthorities:
    """Records each call as (method, args) and the actor of each change, and answers REPORT, or raises
    ``error`` when set."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    actors: list[Actor] = field(default_factory=list)
    error: Exception | None = None

    def _called(self, name: str, actor: Actor, **args: Any) -> ChangeReport:
        self.calls.append((name, args))
        self.actors.append(actor)
        if self.error is not None:
            raise self.error
        return REPORT

    def list(self) -> tuple[AuthorityView, ...]:
        return (AuthorityView(PKI.x509_record, 7, NOW + timedelta(hours=1)), AuthorityView(PKI.jwt_record, 0, None))

    def show(self, authority_id: str) -> AuthorityView:
        self.calls.append(("show", {"authority_id": authority_id}))
        if self.error is not None:
            raise self.error
        return AuthorityView(PKI.jwt_record, 0, None)

    def prepare(self, kind: AuthorityKind, actor: Actor, *, dry_run: bool = False) -> ChangeReport:
        return self._called("prepare", actor, kind=kind, dry_run=dry_run)

    def activate(self, authority_id: str, actor: Actor, *, dry_run: bool = False, force: bool = False) -> ChangeReport:
        return self._called("activate", actor, authority_id=authority_id, dry_run=dry_run, force=force)

    def taint(self, authority_id: str, actor: Actor, *, dry_run: bool = False) -> ChangeReport:
        return self._called("taint", actor, authority_id=authority_id, dry_run=dry_run)

    def revoke(self, authority_id: str, actor: Actor, *, dry_run: bool = False) -> ChangeReport:
        return self._called("revoke", actor, authority_id=authority_id, dry_run=dry_run)

    def rotate_now(self, kind: AuthorityKind, actor: Actor, *, dry_run: bool = False) -> ChangeReport:
        return self._called("rotate_now", actor, kind=kind, dry_run=dry_run)

    def revoke_svids(
        self,
        actor: Actor,
        *,
        serial: int | None = None,
        spiffe_id: SpiffeId | None = None,
        reason: x509.ReasonFlags | None = None,
        dry_run: bool = False,
    ) -> ChangeReport:
        return self._called("revoke_svids", actor, serial=serial, spiffe_id=spiffe_id, reason=reason, dry_run=dry_run)

    def get_crl(self, authority_id: str) -> bytes:
        if authority_id != PKI.x509_record.id:
            raise NotFound(f"no CRL is published for authority {authority_id!r}")
        return PKI.crl_der

    def list_crls(self) -> tuple[tuple[str, bytes], ...]:
        return ((PKI.x509_record.id, PKI.crl_der),)


@pytest.fixture
def fake() -> FakeAuthorities:
    return FakeAuthorities()


@pytest.fixture
def admin(fake: FakeAuthorities) -> TestClient:
    app = create_admin_app(
        UNUSED,
        CollectorRegistry(),
        entries=UNUSED,
        join_tokens=UNUSED,
        authorities=fake,
        authenticator=LocalAdmin(),
        audit=RecordedAudit(),
        clock=FakeClock(NOW),
    )
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def health(fake: FakeAuthorities) -> TestClient:
    return TestClient(create_health_app(UNUSED, CollectorRegistry(), authorities=fake), raise_server_exceptions=False)


# --- reading -----------------------------------------------------------------------------------------


def test_list_encodes_an_x509_authority_with_its_certificate_and_upstream(admin: TestClient) -> None:
    item = admin.get("/v1/authorities").json()["authorities"][0]
    cert = x509.load_pem_x509_certificate(item.pop("certificate_pem").encode())
    assert cert.public_bytes(serialization.Encoding.DER) == PKI.x509_record.certificate_der
    assert item == {
        "id": PKI.x509_record.id,
        "kind": "x509",
        "state": "active",
        "key_type": "ec-p256",
        "not_before": "2030-01-02T02:04:05Z",
        "not_after": "2030-01-03T03:04:05Z",
        "created_at": "2030-01-02T02:04:05Z",
        "activated_at": "2030-01-02T02:04:05Z",
        "retired_at": None,
        "tainted_at": None,
        "revoked_at": None,
        "live_svids": 7,
        "signed_until": "2030-01-02T04:04:05Z",
        "upstream": cert.issuer.rfc4514_string(),
    }


def test_list_encodes_a_jwt_authority_without_certificate_or_upstream(admin: TestClient) -> None:
    item = admin.get("/v1/authorities").json()["authorities"][1]
    assert (item["id"], item["kind"], item["certificate_pem"], item["upstream"], item["signed_until"]) == (
        "jwtkey1",
        "jwt",
        None,
        None,
        None,
    )


def test_show_asks_for_the_authority_in_the_path(admin: TestClient, fake: FakeAuthorities) -> None:
    reply = admin.get("/v1/authorities/jwtkey1")
    assert (reply.status_code, reply.json()["id"], fake.calls) == (
        200,
        "jwtkey1",
        [("show", {"authority_id": "jwtkey1"})],
    )


def test_show_of_an_unknown_authority_is_404_with_the_domain_message(admin: TestClient, fake: FakeAuthorities) -> None:
    fake.error = NotFound("authority 'nope' is not in the datastore")
    reply = admin.get("/v1/authorities/nope")
    assert (reply.status_code, reply.json()) == (404, {"error": "authority 'nope' is not in the datastore"})


# --- changes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "call"),
    [
        pytest.param(
            "/v1/authorities/prepare",
            {"kind": "x509", "dry_run": True},
            ("prepare", {"kind": AuthorityKind.X509, "dry_run": True}),
            id="prepare-x509",
        ),
        pytest.param(
            "/v1/authorities/prepare",
            {"kind": "jwt", "dry_run": False},
            ("prepare", {"kind": AuthorityKind.JWT, "dry_run": False}),
            id="prepare-jwt",
        ),
        pytest.param(
            "/v1/authorities/abc/activate",
            {"dry_run": True, "force": True},
            ("activate", {"authority_id": "abc", "dry_run": True, "force": True}),
            id="activate",
        ),
        pytest.param(
            "/v1/authorities/abc/activate",
            {},
            ("activate", {"authority_id": "abc", "dry_run": False, "force": False}),
            id="activate-defaults",
        ),
        pytest.param(
            "/v1/authorities/abc/taint",
            {"dry_run": True},
            ("taint", {"authority_id": "abc", "dry_run": True}),
            id="taint",
        ),
        pytest.param(
            "/v1/authorities/abc/revoke",
            {"dry_run": True},
            ("revoke", {"authority_id": "abc", "dry_run": True}),
            id="revoke",
        ),
        pytest.param(
            "/v1/authorities/rotate",
            {"kind": "jwt", "dry_run": True},
            ("rotate_now", {"kind": AuthorityKind.JWT, "dry_run": True}),
            id="rotate",
        ),
    ],
)
def test_change_route_calls_its_use_case_with_the_body(
    admin: TestClient, fake: FakeAuthorities, path: str, body: dict[str, Any], call: tuple[str, dict[str, Any]]
) -> None:
    reply = admin.post(path, json=body)
    assert (reply.status_code, fake.calls) == (200, [call])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/authorities/prepare", {"kind": "x509"}, id="prepare"),
        pytest.param("/v1/authorities/abc/activate", {}, id="activate"),
        pytest.param("/v1/authorities/abc/taint", {}, id="taint"),
        pytest.param("/v1/authorities/abc/revoke", {}, id="revoke"),
        pytest.param("/v1/authorities/rotate", {"kind": "x509"}, id="rotate"),
        pytest.param("/v1/revocations", {"serial": "abc"}, id="revoke-svids"),
    ],
)
def test_change_route_passes_the_authenticated_caller_as_the_actor(
    admin: TestClient, fake: FakeAuthorities, path: str, body: dict[str, Any]
) -> None:
    assert admin.post(path, json=body).status_code == 200
    assert fake.actors == [Actor("unix:uid=0", "unix-socket", BREAK_GLASS_ROLE)]


def test_change_reply_is_the_report_with_serials_in_lowercase_hex(admin: TestClient) -> None:
    assert admin.post("/v1/authorities/abc/taint", json={"dry_run": True}).json() == {
        "action": "taint",
        "dry_run": True,
        "changes": [{"authority_id": "abc123", "kind": "x509", "before": "retired", "after": "tainted"}],
        "svids_affected": 3,
        "agents_affected": [str(AGENT)],
        "bundle_x509": ["abc123", "def456"],
        "bundle_jwt": ["jwtkey1"],
        "revoked_serials": ["deadbeef"],
        "notes": [],
    }


def test_refused_change_is_409_with_the_domain_message(admin: TestClient, fake: FakeAuthorities) -> None:
    fake.error = FailedPrecondition("authority abc is active; activate a successor first")
    reply = admin.post("/v1/authorities/abc/taint", json={"dry_run": False})
    assert (reply.status_code, reply.json()) == (409, {"error": "authority abc is active; activate a successor first"})


def test_body_with_an_unknown_field_is_400(admin: TestClient, fake: FakeAuthorities) -> None:
    reply = admin.post("/v1/authorities/abc/taint", json={"dry_run": True, "force": True})
    assert (reply.status_code, fake.calls) == (400, [])
    assert reply.json()["error"].startswith("malformed request: force:")


def test_prepare_of_an_unknown_kind_is_400(admin: TestClient, fake: FakeAuthorities) -> None:
    reply = admin.post("/v1/authorities/prepare", json={"kind": "ssh", "dry_run": False})
    assert (reply.status_code, fake.calls) == (400, [])


# --- SVID revocation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "serial"),
    [
        pytest.param("deadbeef", 0xDEADBEEF, id="plain"),
        pytest.param("0xDEADBEEF", 0xDEADBEEF, id="0x-prefix-uppercase"),
        pytest.param("de:ad:be:ef", 0xDEADBEEF, id="openssl-colons"),
    ],
)
def test_revocation_reads_the_serial_as_hex(admin: TestClient, fake: FakeAuthorities, text: str, serial: int) -> None:
    admin.post("/v1/revocations", json={"serial": text, "dry_run": True})
    assert fake.calls == [("revoke_svids", {"serial": serial, "spiffe_id": None, "reason": None, "dry_run": True})]


@pytest.mark.parametrize("text", [pytest.param("xyz", id="not-hex"), pytest.param("", id="empty")])
def test_revocation_of_a_non_hex_serial_is_400_saying_how_to_write_it(
    admin: TestClient, fake: FakeAuthorities, text: str
) -> None:
    reply = admin.post("/v1/revocations", json={"serial": text})
    assert (reply.status_code, fake.calls) == (400, [])
    assert reply.json()["error"] == (
        f"serial {text!r} is not a hexadecimal number; give it as `trustmesh-ca x509 mint` prints it, "
        "e.g. '3f9a0c1d' (a 0x prefix and colons are fine)"
    )


def test_revocation_of_serial_zero_is_400(admin: TestClient, fake: FakeAuthorities) -> None:
    reply = admin.post("/v1/revocations", json={"serial": "00"})
    assert (reply.status_code, fake.calls) == (400, [])


def test_revocation_by_spiffe_id_passes_the_parsed_id_and_reason(admin: TestClient, fake: FakeAuthorities) -> None:
    admin.post("/v1/revocations", json={"spiffe_id": str(WEB), "reason": "key-compromise", "dry_run": False})
    assert fake.calls == [
        (
            "revoke_svids",
            {"serial": None, "spiffe_id": WEB, "reason": x509.ReasonFlags.key_compromise, "dry_run": False},
        )
    ]


def test_revocation_with_an_unknown_reason_is_400_listing_the_known_ones(
    admin: TestClient, fake: FakeAuthorities
) -> None:
    reply = admin.post("/v1/revocations", json={"spiffe_id": str(WEB), "reason": "oops"})
    assert (reply.status_code, fake.calls) == (400, [])
    assert reply.json()["error"].startswith("revocation reason 'oops' is not known; use one of: unspecified, ")


def test_revocation_of_a_malformed_spiffe_id_is_400(admin: TestClient, fake: FakeAuthorities) -> None:
    reply = admin.post("/v1/revocations", json={"spiffe_id": "https://example.org/web"})
    assert (reply.status_code, fake.calls) == (400, [])


# --- CRLs --------------------------------------------------------------------------------------------------


def test_public_listener_serves_the_der_crl_as_pkix_crl(health: TestClient) -> None:
    reply = health.get(f"/crl/{PKI.x509_record.id}.crl")
    assert (reply.status_code, reply.headers["content-type"], reply.content) == (
        200,
        "application/pkix-crl",
        PKI.crl_der,
    )


def test_public_listener_answers_404_for_an_authority_without_crl(health: TestClient) -> None:
    reply = health.get("/crl/nope.crl")
    assert (reply.status_code, reply.json()) == (404, {"error": "no CRL is published for authority 'nope'"})


def test_public_listener_has_no_officer_routes(health: TestClient) -> None:
    assert health.get("/v1/authorities").status_code == 404


def test_admin_listener_serves_the_der_crl_too(admin: TestClient) -> None:
    assert admin.get(f"/crl/{PKI.x509_record.id}.crl").content == PKI.crl_der


def test_crl_listing_describes_each_published_crl(admin: TestClient) -> None:
    (item,) = admin.get("/v1/crls").json()["crls"]
    pem = item.pop("pem")
    assert x509.load_pem_x509_crl(pem.encode()).public_bytes(serialization.Encoding.DER) == PKI.crl_der
    assert item == {
        "authority_id": PKI.x509_record.id,
        "this_update": "2030-01-02T03:03:05Z",
        "next_update": "2030-01-03T03:04:05Z",
        "number": 42,
        "revoked_count": 1,
    }
