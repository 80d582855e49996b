"""Replaying a console session cookie (ca/console) against real CAs over HTTPS: two ``serve(config)``
instances in threads, each trusting its own identity provider key (:class:`~tests.support.idp.TestIdp`),
and plain HTTP requests over a socket, as a thief holding the cookie's value would send them.

The cookie's value is the JWT itself, so whoever copies it holds the session until the token expires;
these tests check that it ends there: after ``exp`` every page and every POST action is refused (the
CSRF token issued to the session while it was valid does not help), a CA trusting another IdP key or
audience refuses it, and logging out drops the cookie even once the session has expired."""

from __future__ import annotations

import html
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ca.admin_client import AdminClient
from ca.config import load_config
from ca.console.session import COOKIE
from tests.support.ca_thread import serving
from tests.support.idp import AUDIENCE, ISSUER, TestIdp
from tests.support.processes import free_port

OFFICER = ["security-officer"]
PAGES = ("/console/", "/console/authorities", "/console/svids", "/console/agents", "/console/federation")
SHORT_TTL = 4  # seconds the replayed session's token is valid (the CAs allow no clock skew)
OTHER_AUDIENCE = "trustmesh-ca-b"


@dataclass
class Ca:
    url: str
    idp: TestIdp
    audience: str
    admin_socket: Path

    def client(self) -> httpx.Client:
        # The CA serves a certificate of its own trust domain, which this client does not hold.
        return httpx.Client(base_url=self.url, verify=False, timeout=10, follow_redirects=False)

    def authorities(self) -> list[tuple[str, str, str]]:
        with AdminClient.local(self.admin_socket) as admin:
            listed = admin.request("GET", "/v1/authorities").json()["authorities"]
        return sorted((a["id"], a["kind"], a["state"]) for a in listed)


@dataclass
class Session:
    """A console session as a browser holds it: the cookie's value and the CSRF token of its pages."""

    cookie: str
    csrf: str
    expires_at: float

    def headers(self) -> dict[str, str]:
        return {"cookie": f"{COOKIE}={self.cookie}"}


def ca_config(root: Path, idp: TestIdp, audience: str) -> tuple[Path, int]:
    admin_port = free_port()
    root.mkdir()
    jwks = idp.write_jwks(root / "jwks.json")
    config = root / "ca.toml"
    config.write_text(
        f"""
trust_domain = "example.org"
[server]
data_dir = "{root / "data"}"
admin_socket = "{root / "admin.sock"}"
http_address = ""
node_api_address = "127.0.0.1:0"
attestation_address = "127.0.0.1:0"
[admin_api]
address = "127.0.0.1:{admin_port}"
[admin_api.oidc]
issuer = "{ISSUER}"
audience = "{audience}"
jwks_file = "{jwks}"
clock_skew = "0s"
"""
    )
    return config, admin_port


@pytest.fixture(scope="module")
def cas() -> Iterator[tuple[Ca, Ca]]:
    """CA A trusts one IdP key for the usual audience; CA B another key (same issuer and kid) for another."""
    with tempfile.TemporaryDirectory(prefix="tm-cs-", dir="/tmp") as tmp:
        root = Path(tmp)
        made = []
        for name, audience in (("a", AUDIENCE), ("b", OTHER_AUDIENCE)):
            idp = TestIdp()
            config, port = ca_config(root / name, idp, audience)
            ca = Ca(f"https://127.0.0.1:{port}", idp, audience, root / name / "admin.sock")
            made.append((load_config(config, {}), ca))
        (config_a, ca_a), (config_b, ca_b) = made
        with serving(config_a), serving(config_b):
            yield ca_a, ca_b


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def log_in(ca: Ca, token: str) -> Session:
    """Log in through the login form and keep what the browser would: the cookie and a page's CSRF token."""
    with ca.client() as client:
        form = client.get("/console/login")
        reply = client.post("/console/login", data={"token": token, "csrf": csrf_of(form.text)})
        assert reply.status_code == 303, reply.text
        cookie = client.cookies.get(COOKIE, path="/console")
        assert cookie == token
        page = client.get("/console/authorities")
        assert page.status_code == 200, page.text
        return Session(cookie, csrf_of(page.text), 0.0)


def action_forms(ca: Ca, csrf: str) -> dict[str, dict[str, str]]:
    """Every console POST action, confirmed, aimed at the CA's real authorities."""
    x509 = next(id_ for id_, kind, state in ca.authorities() if kind == "x509" and state == "active")
    confirmed = {"csrf": csrf, "confirm": "yes"}
    return {
        "/console/authorities/prepare": {**confirmed, "kind": "x509"},
        "/console/authorities/rotate": {**confirmed, "kind": "x509"},
        f"/console/authorities/{x509}/activate": confirmed,
        f"/console/authorities/{x509}/taint": confirmed,
        f"/console/authorities/{x509}/revoke": confirmed,
        "/console/svids/revoke": {**confirmed, "serial": "1", "reason": "keyCompromise"},
    }


@pytest.fixture(scope="module")
def expired(cas: tuple[Ca, Ca]) -> Session:
    """An officer's session on CA A whose token has expired: it worked (a dry run went through), then
    the test waited past its ``exp``."""
    ca_a, _ = cas
    token = ca_a.idp.token("olivia", OFFICER, ttl_seconds=SHORT_TTL)
    session = log_in(ca_a, token)
    with ca_a.client() as client:
        preview = client.post(
            "/console/authorities/rotate", data={"csrf": session.csrf, "kind": "x509"}, headers=session.headers()
        )
    assert preview.status_code == 200, preview.text
    assert "Dry run" in preview.text
    expires_at = time.time() + SHORT_TTL
    time.sleep(max(0.0, expires_at - time.time()) + 1.0)
    return Session(session.cookie, session.csrf, expires_at)


def test_an_expired_session_cookie_is_refused_on_every_page(cas: tuple[Ca, Ca], expired: Session) -> None:
    ca_a, _ = cas

    with ca_a.client() as client:
        replies = {path: client.get(path, headers=expired.headers()) for path in (*PAGES, "/console/audit")}

    assert {path: reply.status_code for path, reply in replies.items()} == dict.fromkeys(replies, 401)
    assert all("bearer token expired" in reply.text for reply in replies.values())


def test_an_expired_session_cookie_with_its_csrf_token_is_refused_every_action(
    cas: tuple[Ca, Ca], expired: Session
) -> None:
    ca_a, _ = cas
    before = ca_a.authorities()

    with ca_a.client() as client:
        replies = {
            path: client.post(path, data=form, headers=expired.headers())
            for path, form in action_forms(ca_a, expired.csrf).items()
        }

    assert {path: reply.status_code for path, reply in replies.items()} == dict.fromkeys(replies, 401)
    assert ca_a.authorities() == before


def test_an_expired_session_can_still_log_out(cas: tuple[Ca, Ca], expired: Session) -> None:
    ca_a, _ = cas

    with ca_a.client() as client:
        client.cookies.set(COOKIE, expired.cookie, domain="127.0.0.1", path="/console")
        reply = client.post("/console/logout", data={"csrf": expired.csrf})

        assert reply.status_code == 303
        assert reply.headers["location"] == "/console/login"
        assert client.cookies.get(COOKIE, path="/console") is None


def test_logging_out_drops_the_cookie_so_the_next_page_asks_for_a_login(cas: tuple[Ca, Ca]) -> None:
    ca_a, _ = cas
    session = log_in(ca_a, ca_a.idp.token("olivia", OFFICER))

    with ca_a.client() as client:
        client.cookies.set(COOKIE, session.cookie, domain="127.0.0.1", path="/console")
        assert client.get("/console/").status_code == 200
        logout = client.post("/console/logout", data={"csrf": session.csrf})
        after = client.get("/console/")

    assert logout.status_code == 303
    assert after.status_code == 401
    assert 'href="/console/login"' in after.text


def test_a_logout_post_without_the_sessions_csrf_token_keeps_the_session(cas: tuple[Ca, Ca]) -> None:
    ca_a, _ = cas
    session = log_in(ca_a, ca_a.idp.token("olivia", OFFICER))

    with ca_a.client() as client:
        client.cookies.set(COOKIE, session.cookie, domain="127.0.0.1", path="/console")
        refused = client.post("/console/logout", data={"csrf": "forged"})
        still = client.get("/console/")

    assert refused.status_code == 403
    assert still.status_code == 200


def test_a_session_cookie_of_a_ca_trusting_another_idp_key_is_refused(cas: tuple[Ca, Ca]) -> None:
    ca_a, ca_b = cas
    session = log_in(ca_a, ca_a.idp.token("olivia", OFFICER))
    before = ca_b.authorities()

    with ca_b.client() as client:
        pages = {path: client.get(path, headers=session.headers()) for path in PAGES}
        forms = action_forms(ca_b, session.csrf)
        actions = {path: client.post(path, data=form, headers=session.headers()) for path, form in forms.items()}

    assert {path: reply.status_code for path, reply in pages.items()} == dict.fromkeys(pages, 401)
    assert {path: reply.status_code for path, reply in actions.items()} == dict.fromkeys(actions, 401)
    assert all("signature does not verify" in reply.text for reply in pages.values())
    assert ca_b.authorities() == before


def test_a_token_for_another_audience_is_refused_at_login_and_as_a_cookie(cas: tuple[Ca, Ca]) -> None:
    _, ca_b = cas
    # Signed by the IdP key CA B trusts, but for CA A's audience.
    token = ca_b.idp.token("olivia", OFFICER, aud=AUDIENCE)

    with ca_b.client() as client:
        form = client.get("/console/login")
        login = client.post("/console/login", data={"token": token, "csrf": csrf_of(form.text)})
        page = client.get("/console/", headers={"cookie": f"{COOKIE}={token}"})

    assert login.status_code == 401
    assert client.cookies.get(COOKIE, path="/console") is None
    assert page.status_code == 401
    assert f"not for audience {OTHER_AUDIENCE!r}" in html.unescape(page.text)
