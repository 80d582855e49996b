"""The web console (ca/console) on the admin app, with the domain faked: the session cookie is the
bearer token on console pages only, every POST needs its session's CSRF token, actions run as a dry run
until confirmed, an auditor sees no action and is refused one, and hostile strings are escaped."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ca.admin_auth import Presented, Principal
from ca.audit_log import AuditVerification
from ca.authority import AuthorityState
from ca.authority_changes import StateChange
from ca.authority_ops import AuthorityView, ChangeReport
from ca.console.session import COOKIE
from ca.http_api import create_admin_app
from ca.inventory import InventorySummary, Page, SvidItem, TimelineEvent, TimelineEventKind
from ca.rbac import Role
from ca.store.records import Actor, AuthorityKind, AuthorityRecord, IssuedCertificate
from spiffe_core.errors import NotAuthenticated
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.admin import RecordedAudit
from tests.support.clock import FakeClock

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
OFFICER = "officer.token.sig"
AUDITOR = "auditor.token.sig"
HOSTILE = "<script>alert('owned')</script>"
AUTHORITY = AuthorityRecord(
    id="a1b2c3",
    kind=AuthorityKind.X509,
    trust_domain=TrustDomain.parse("example.org"),
    state=AuthorityState.ACTIVE,
    key_type=KeyType.EC_P256,
    key_ref="ref",
    public_key_der=b"",
    not_before=NOW - timedelta(days=1),
    not_after=NOW + timedelta(days=30),
    created_at=NOW - timedelta(days=1),
    activated_at=NOW - timedelta(days=1),
)


def svid(serial: int, expires_in: timedelta, owners: tuple[str, ...] = ()) -> SvidItem:
    certificate = IssuedCertificate(
        serial=serial,
        spiffe_id=SpiffeId.parse(f"spiffe://example.org/w{serial}"),
        authority_id=AUTHORITY.id,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + expires_in,
        issued_at=NOW - timedelta(minutes=5),
    )
    return SvidItem(certificate, owners)


class Tokens:
    PRINCIPALS = {
        OFFICER: Principal("oidc:idp#olivia", "oidc", frozenset({Role.SECURITY_OFFICER})),
        AUDITOR: Principal("oidc:idp#ada", "oidc", frozenset({Role.AUDITOR})),
    }

    def authenticate(self, presented: Presented) -> Principal:
        principal = self.PRINCIPALS.get(presented.bearer_token or "")
        if principal is None:
            raise NotAuthenticated("bearer token expired at 2030-01-02T03:00:00+00:00")
        return principal


@dataclass
class Domain:
    """Every domain object the console shows, with the calls made to it."""

    svids_shown: tuple[SvidItem, ...] = ()
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def list(self, *_args: object, **_kwargs: object) -> tuple[Any, ...]:
        return (AuthorityView(AUTHORITY, live_svids=3, signed_until=NOW + timedelta(hours=1)),)

    def rotate_now(self, kind: AuthorityKind, actor: Actor, *, dry_run: bool = False) -> ChangeReport:
        self.calls.append(("rotate", (kind, actor, dry_run)))
        changes = (
            StateChange("(new)", kind, None, AuthorityState.ACTIVE),
            StateChange(AUTHORITY.id, kind, AuthorityState.ACTIVE, AuthorityState.TAINTED),
        )
        return ChangeReport("rotate", dry_run, changes, svids_affected=3)

    def svids(self, *_args: object, **_kwargs: object) -> Page[SvidItem]:
        return Page(self.svids_shown, len(self.svids_shown))

    def timeline(self) -> tuple[TimelineEvent, ...]:
        return (TimelineEvent(NOW, AUTHORITY.id, AuthorityKind.X509, TimelineEventKind.ACTIVATED),)

    def summary(self) -> InventorySummary:
        return InventorySummary(NOW, 3, 0, 1, 0, 0, 0, 0, 1, 0, {"x509 active": 1})

    def verify(self) -> AuditVerification:
        return AuditVerification(True, "", None, 0, None, 0, 0, None, None)


@pytest.fixture
def audit() -> RecordedAudit:
    return RecordedAudit()


@pytest.fixture
def domain() -> Domain:
    return Domain(svids_shown=(svid(0xA1, timedelta(hours=1), (HOSTILE,)), svid(0xB2, timedelta(days=20))))


@pytest.fixture
def client(audit: RecordedAudit, domain: Domain) -> Iterator[TestClient]:
    app = create_admin_app(
        domain,  # type: ignore[arg-type]
        CollectorRegistry(),
        entries=domain,  # type: ignore[arg-type]
        join_tokens=domain,  # type: ignore[arg-type]
        authorities=domain,  # type: ignore[arg-type]
        agents=domain,  # type: ignore[arg-type]
        federation=domain,  # type: ignore[arg-type]
        mappings=domain,  # type: ignore[arg-type]
        inventory=domain,  # type: ignore[arg-type]
        authenticator=Tokens(),
        audit=audit,
        clock=FakeClock(NOW),
        audit_log=domain,  # type: ignore[arg-type]
    )
    with TestClient(app, base_url="https://testserver", raise_server_exceptions=False) as test_client:
        yield test_client


def log_in(client: TestClient, token: str) -> Any:
    page = client.get("/console/login")
    return client.post("/console/login", data={"token": token, "csrf": csrf_of(page.text)}, follow_redirects=False)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


# --- login and the session cookie -----------------------------------------------------------------


def test_a_verified_token_is_kept_in_an_httponly_strict_console_cookie(client: TestClient) -> None:
    reply = log_in(client, OFFICER)

    assert reply.status_code == 303
    cookie = next(c for c in reply.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
    assert cookie == f"{COOKIE}={OFFICER}; Path=/console; HttpOnly; SameSite=Strict; Secure"


def test_a_token_that_does_not_verify_is_refused_audited_and_not_echoed(
    client: TestClient, audit: RecordedAudit
) -> None:
    reply = log_in(client, "stolen.expired.token")

    assert reply.status_code == 401
    assert "bearer token expired" in reply.text
    assert "stolen.expired.token" not in reply.text
    assert not any(c.startswith(f"{COOKIE}=") for c in reply.headers.get_list("set-cookie"))
    assert [(e.action, e.outcome) for e in audit.events] == [("console.login", "denied")]


def test_a_login_post_without_the_login_forms_nonce_is_refused(client: TestClient) -> None:
    client.get("/console/login")

    reply = client.post("/console/login", data={"token": OFFICER, "csrf": "guessed"}, follow_redirects=False)

    assert reply.status_code == 400
    assert not any(c.startswith(f"{COOKIE}=") for c in reply.headers.get_list("set-cookie"))


def test_console_pages_authenticate_from_the_cookie(client: TestClient) -> None:
    log_in(client, OFFICER)

    page = client.get("/console/authorities")

    assert page.status_code == 200
    assert "oidc:idp#olivia" in page.text
    assert AUTHORITY.id in page.text


def test_a_console_page_without_a_session_is_refused_with_a_way_to_log_in(
    client: TestClient, audit: RecordedAudit
) -> None:
    page = client.get("/console/svids")

    assert page.status_code == 401
    assert page.headers["content-type"].startswith("text/html")
    assert 'href="/console/login"' in page.text
    assert [(e.action, e.outcome) for e in audit.events] == [("console.svids", "denied")]


def test_the_json_api_ignores_the_console_cookie(client: TestClient) -> None:
    client.cookies.set(COOKIE, OFFICER)

    assert client.get("/v1/authorities").status_code == 401


def test_logging_out_clears_the_cookie(client: TestClient) -> None:
    log_in(client, OFFICER)
    token = csrf_of(client.get("/console/").text)

    reply = client.post("/console/logout", data={"csrf": token}, follow_redirects=False)

    assert reply.status_code == 303
    assert f"{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0; Secure" in reply.headers.get_list(
        "set-cookie"
    )


def test_pages_forbid_scripts_framing_and_caching(client: TestClient) -> None:
    log_in(client, OFFICER)

    headers = client.get("/console/").headers

    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"


def test_the_stylesheet_is_served_by_the_console_itself(client: TestClient) -> None:
    reply = client.get("/console/static/console.css")

    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/css")


# --- CSRF and the officer's actions --------------------------------------------------------------


def test_an_action_without_the_csrf_token_is_refused_and_audited(
    client: TestClient, domain: Domain, audit: RecordedAudit
) -> None:
    log_in(client, OFFICER)

    reply = client.post("/console/authorities/rotate", data={"kind": "x509", "confirm": "yes"})

    assert reply.status_code == 403
    assert domain.calls == []
    assert [(e.action, e.actor.name) for e in audit.events] == [("authority.rotate", "oidc:idp#olivia")]


def test_a_csrf_token_of_another_session_is_refused(client: TestClient, domain: Domain) -> None:
    log_in(client, AUDITOR)
    auditors = csrf_of(client.get("/console/").text)
    log_in(client, OFFICER)

    reply = client.post("/console/authorities/rotate", data={"kind": "x509", "csrf": auditors, "confirm": "yes"})

    assert reply.status_code == 403
    assert domain.calls == []


def test_an_action_is_a_dry_run_until_confirmed(client: TestClient, domain: Domain) -> None:
    log_in(client, OFFICER)
    token = csrf_of(client.get("/console/authorities").text)

    preview = client.post("/console/authorities/rotate", data={"kind": "x509", "csrf": token})
    confirm_form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', preview.text))
    applied = client.post("/console/authorities/rotate", data=confirm_form)

    assert preview.status_code == 200
    assert "Dry run" in preview.text
    assert confirm_form["confirm"] == "yes"
    assert applied.status_code == 200
    assert "Done." in applied.text
    assert [dry_run for _, (_, _, dry_run) in domain.calls] == [True, False]
    assert domain.calls[1][1][1] == Actor("oidc:idp#olivia", "oidc", "security-officer")


def test_a_domain_error_is_shown_as_a_page(client: TestClient) -> None:
    log_in(client, OFFICER)
    token = csrf_of(client.get("/console/authorities").text)

    reply = client.post("/console/authorities/rotate", data={"kind": "rsa", "csrf": token})

    assert reply.status_code == 400
    assert "kind must be x509 or jwt" in reply.text
    assert reply.headers["content-type"].startswith("text/html")


# --- roles -------------------------------------------------------------------------------------------


def test_an_officer_is_offered_the_actions(client: TestClient) -> None:
    log_in(client, OFFICER)

    assert 'action="/console/authorities/rotate"' in client.get("/console/authorities").text
    assert 'action="/console/svids/revoke"' in client.get("/console/svids").text


def test_an_auditor_is_offered_no_action(client: TestClient) -> None:
    log_in(client, AUDITOR)

    for path in ("/console/authorities", "/console/svids"):
        posts = re.findall(r'<form[^>]*method="post" action="([^"]+)"', client.get(path).text)
        assert posts == ["/console/logout"]


def test_an_auditors_direct_post_is_refused_and_audited(
    client: TestClient, domain: Domain, audit: RecordedAudit
) -> None:
    log_in(client, AUDITOR)
    token = csrf_of(client.get("/console/").text)

    reply = client.post("/console/authorities/rotate", data={"kind": "x509", "csrf": token, "confirm": "yes"})

    assert reply.status_code == 403
    assert "needs security-officer" in reply.text
    assert domain.calls == []
    assert [(e.action, e.actor.name, e.outcome) for e in audit.events] == [
        ("authority.rotate", "oidc:idp#ada", "denied")
    ]


# --- rendering -------------------------------------------------------------------------------------


def test_hostile_strings_are_escaped(client: TestClient) -> None:
    log_in(client, OFFICER)

    page = client.get("/console/svids").text

    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in page


def test_svids_expiring_within_the_window_are_highlighted(client: TestClient) -> None:
    log_in(client, OFFICER)

    page = client.get("/console/svids", params={"window": "2h"}).text

    assert re.search(r'<tr class="soon" data-serial="a1">', page)
    assert re.search(r'<tr class="" data-serial="b2">', page)
