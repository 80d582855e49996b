"""The web console in a real headless Chromium (Debian's, installed by scripts/ensure-chromium) against
one real `trustmesh-ca run` with its HTTPS admin API and OIDC (issue 11 item 5 acceptance): an officer
logs in with a JWT, sees the authorities and an SVID expiring soon, previews a rotation's dry run,
confirms it and sees the new authority active; an auditor sees no action, and a POST of theirs (with
their own session's CSRF token) is refused 403 and audited.

Set TM_CONSOLE_SCREENSHOTS to a directory (e.g. docs/img) to keep the screenshots docs/console.md shows
(not a TRUSTMESH_ name: the CA refuses unknown variables with its prefix); otherwise they go to a
temporary directory."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ca.admin_client import AdminClient
from tests.support.idp import TestIdp
from tests.support.processes import background, command, free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
SHORT_LIVED = "spiffe://example.org/batch/nightly-report"
LONG_LIVED = "spiffe://example.org/web/frontend"

pytestmark = pytest.mark.e2e


@dataclass
class Ca:
    root: Path
    url: str
    idp: TestIdp

    def local(self) -> AdminClient:
        return AdminClient.local(self.root / "data" / "admin.sock")

    def mint(self, spiffe_id: str, ttl_seconds: int) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        body = {
            "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "spiffe_id": spiffe_id,
            "ttl_seconds": ttl_seconds,
        }
        with self.local() as admin:
            admin.post_json("/v1/x509-svids", body)


@pytest.fixture(scope="module")
def ca() -> Iterator[Ca]:
    with tempfile.TemporaryDirectory(prefix="tm-console-", dir="/tmp") as tmp:
        root = Path(tmp)
        idp = TestIdp()
        jwks = idp.write_jwks(root / "jwks.json")
        http_port, admin_port = free_port(), free_port()
        config = root / "ca.toml"
        config.write_text(
            f"""
trust_domain = "example.org"
[server]
data_dir = "{root / "data"}"
http_address = "127.0.0.1:{http_port}"
node_api_address = "127.0.0.1:{free_port()}"
attestation_address = "127.0.0.1:{free_port()}"
[admin_api]
address = "127.0.0.1:{admin_port}"
{idp.config(jwks)}"""
        )
        with background([command("trustmesh-ca"), "--config", str(config), "run"], root / "ca.log") as proc:

            def ready() -> bool:
                assert proc.poll() is None, (root / "ca.log").read_text()
                try:
                    httpx.get(f"http://127.0.0.1:{http_port}/ready", timeout=1).raise_for_status()
                    with socket.create_connection(("127.0.0.1", admin_port), timeout=1):
                        return True
                except (httpx.HTTPError, OSError):
                    return False

            wait_until(ready, 30, "the CA and its HTTPS admin listener")
            yield Ca(root, f"https://127.0.0.1:{admin_port}", idp)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    chosen = os.environ.get("TM_CONSOLE_SCREENSHOTS")
    path = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="tm-console-shots-", dir="/tmp"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def logged_in(browser: Browser, ca: Ca, subject: str, roles: list[str]) -> Page:
    # The CA's serving certificate chains to its own trust domain's bundle, which this browser does not hold.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(f"{ca.url}/console/login")
    page.fill("#token", ca.idp.token(subject, roles))
    page.click("#login")
    expect(page.locator("header .who")).to_contain_text(subject)
    return page


def states(page: Page, kind: str) -> dict[str, str]:
    """authority ID -> state of the ``kind`` rows of the authorities table."""
    rows = page.locator(f"#authorities tr[data-authority][data-kind='{kind}']")
    return {
        rows.nth(i).get_attribute("data-authority") or "": rows.nth(i).get_attribute("data-state") or ""
        for i in range(rows.count())
    }


def test_an_officer_previews_and_confirms_a_rotation_and_an_auditor_is_refused(
    ca: Ca, browser: Browser, shots: Path
) -> None:
    ca.mint(SHORT_LIVED, ttl_seconds=300)
    ca.mint(LONG_LIVED, ttl_seconds=3600)
    officer = logged_in(browser, ca, "olivia", ["security-officer"])
    officer.screenshot(path=shots / "console-overview.png")

    officer.goto(f"{ca.url}/console/authorities")
    (old_active,) = [a for a, state in states(officer, "x509").items() if state == "active"]
    officer.screenshot(path=shots / "console-authorities.png", full_page=True)

    officer.goto(f"{ca.url}/console/svids?window=10m")
    expect(officer.locator("#svids tr.soon")).to_contain_text(SHORT_LIVED)
    expect(officer.locator("#svids tr.soon")).not_to_contain_text(LONG_LIVED)
    officer.screenshot(path=shots / "console-svids.png", full_page=True)

    officer.goto(f"{ca.url}/console/authorities")
    officer.click("#rotate-x509")
    expect(officer.locator("#dry-run")).to_be_visible()
    expect(officer.locator("#changes")).to_contain_text(old_active)
    officer.screenshot(path=shots / "console-rotate-dry-run.png", full_page=True)
    assert states_via_api(ca)[old_active] == "active", "the dry run changed nothing"

    officer.click("#confirm")
    expect(officer.locator("#applied")).to_be_visible()
    officer.click("#back")
    after = states(officer, "x509")
    assert after[old_active] == "tainted"
    assert [a for a, state in after.items() if state == "active" and a != old_active]

    auditor = logged_in(browser, ca, "ada", ["auditor"])
    auditor.goto(f"{ca.url}/console/authorities")
    assert auditor.locator("form[method='post']").count() == 1  # only logging out
    assert auditor.locator("#logout").count() == 1
    csrf = auditor.locator("input[name='csrf']").first.get_attribute("value") or ""
    refused = auditor.request.post(
        f"{ca.url}/console/authorities/rotate", form={"kind": "x509", "csrf": csrf, "confirm": "yes"}
    )
    assert refused.status == 403
    assert "needs security-officer" in refused.text()
    assert audited_refusals(ca, "authority.rotate") == ["oidc:https://idp.test/realms/ops#ada"]

    auditor.goto(f"{ca.url}/console/audit")
    expect(auditor.locator("#verification")).to_contain_text("the audit log verifies")
    auditor.screenshot(path=shots / "console-audit.png")


def states_via_api(ca: Ca) -> dict[str, str]:
    with ca.local() as admin:
        return {a["id"]: a["state"] for a in admin.get_json("/v1/authorities")["authorities"]}


def audited_refusals(ca: Ca, action: str) -> list[str]:
    with ca.local() as admin:
        records = admin.get_json("/v1/audit", outcome="denied", action=action)["records"]
    return [r["actor"] for r in records if r["target"].startswith("POST /console/")]
