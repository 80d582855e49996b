"""``trustmesh-ca federation …`` and the admin API's ``/v1/federation/relationships`` routes against a
running CA (the same module CA as tests/integration/ca/test_cli_entries.py: ``serve(config)`` on SQLite
in a thread, the CLI's ``main`` over the admin socket). Each test federates with its own trust domain,
whose endpoint is a closed port on loopback: a partner that is down, which must block nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ca.config import load_config
from tests.integration.ca import test_cli_entries as module_ca
from tests.integration.ca.test_cli_entries import Cli, labelled
from tests.support.processes import free_port
from tests.support.sds_snapshots import TestCa

BASE = "/v1/federation/relationships"
STATUS_TIMEOUT = 10.0

# The module's CA, from test_cli_entries (started once for this module too).
config_file = module_ca.config_file
running_ca = module_ca.running_ca
cli = module_ca.cli


@pytest.fixture
def admin(running_ca: Path) -> Iterator[httpx.Client]:
    """Raw HTTP over the admin socket, to see status codes (the CLI turns them into one-line errors)."""
    socket = load_config(running_ca, {}).server.admin_socket
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://trustmesh-ca") as client:
        yield client


def down_url() -> str:
    return f"https://127.0.0.1:{free_port()}/"


def web_body(trust_domain: str, **changes: Any) -> dict[str, Any]:
    return {"trust_domain": trust_domain, "bundle_endpoint_url": down_url(), "profile": "https_web", **changes}


def shown(cli: Cli, trust_domain: str) -> dict[str, Any]:
    return dict(json.loads(cli.ok("federation", "show", trust_domain, "--json")))


def wait_for_attempt(cli: Cli, trust_domain: str) -> dict[str, Any]:
    deadline = time.monotonic() + STATUS_TIMEOUT
    while time.monotonic() < deadline:
        status = shown(cli, trust_domain)
        if status["last_attempt_at"] is not None:
            return status
        time.sleep(0.05)
    raise AssertionError(f"no fetch of {trust_domain} within {STATUS_TIMEOUT} s")


def test_a_relationship_with_a_down_partner_is_created_reported_refreshed_and_deleted(cli: Cli) -> None:
    url = down_url()
    created = labelled(cli.ok("federation", "create", "down.test", "--url", url, "--profile", "https_web"))
    assert (created["Trust domain"], created["Endpoint URL"], created["Profile"]) == ("down.test", url, "https_web")
    assert (created["Bundle sequence"], created["Last success"]) == ("-", "-")

    status = wait_for_attempt(cli, "down.test")
    assert status["last_error"].startswith(f"fetching {url} failed: ")
    assert status["last_success_at"] is None
    row = next(line for line in cli.ok("federation", "list").splitlines() if line.startswith("down.test "))
    assert row.split()[:4] == ["down.test", "https_web", "-", "-"]
    assert row.endswith(status["last_error"])

    assert cli.ok("federation", "refresh", "down.test") == (
        "asked for a fetch of down.test's bundle; `federation show` reports the outcome\n"
    )
    assert cli.ok("federation", "delete", "down.test") == (
        "deleted the relationship with down.test; its bundle leaves every workload now\n"
    )
    assert cli("federation", "show", "down.test") == (
        1,
        "",
        "trustmesh-ca: error: no federation relationship with down.test; `trustmesh-ca federation list` shows them\n",
    )


def test_an_https_spiffe_relationship_holds_its_bootstrap_bundle_from_the_start(cli: Cli, tmp_path: Path) -> None:
    partner = TestCa.create("boot.test")
    (tmp_path / "boot.json").write_text(partner.bundle(sequence=4).to_json())
    created = cli.json(
        "federation", "create", "boot.test", "--url", down_url(), "--profile", "https_spiffe",
        "--endpoint-spiffe-id", "spiffe://boot.test/trustmesh/server", "--bundle-file", str(tmp_path / "boot.json"),
    )  # fmt: skip
    assert (created["bundle_sequence"], created["x509_authorities"], created["jwt_authorities"]) == (4, 1, 0)
    assert created["endpoint_spiffe_id"] == "spiffe://boot.test/trustmesh/server"
    cli.ok("federation", "delete", "boot.test")


def test_a_second_relationship_with_a_trust_domain_is_a_conflict(admin: httpx.Client) -> None:
    assert admin.post(BASE, json=web_body("twice.test")).status_code == 201
    again = admin.post(BASE, json=web_body("twice.test"))
    assert (again.status_code, again.json()["error"]) == (
        409,
        "a federation relationship with twice.test exists already; delete it first to change its endpoint",
    )
    assert admin.delete(f"{BASE}/twice.test").status_code == 200


def test_refresh_is_accepted_for_later(admin: httpx.Client) -> None:
    assert admin.post(BASE, json=web_body("later.test")).status_code == 201
    refreshed = admin.post(f"{BASE}/later.test/refresh")
    assert (refreshed.status_code, refreshed.json()["trust_domain"]) == (202, "later.test")
    admin.delete(f"{BASE}/later.test")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        pytest.param(
            "GET", f"{BASE}/nobody.test", None, 404,
            "no federation relationship with nobody.test; `trustmesh-ca federation list` shows them",
            id="unknown",
        ),
        pytest.param(
            "DELETE", f"{BASE}/Upper.Test", None, 400,
            "trust domain 'Upper.Test' has uppercase letters; trust domains are lowercase — use 'upper.test'",
            id="malformed-trust-domain",
        ),
        pytest.param(
            "POST", BASE, web_body("example.org"), 400,
            "example.org is this CA's own trust domain; federate with another one",
            id="own-trust-domain",
        ),
        pytest.param(
            "POST", BASE, web_body("nobundle.test", profile="https_spiffe"), 400,
            "profile https_spiffe needs the endpoint's SPIFFE ID and a bootstrap bundle (the partner's current "
            "bundle) to authenticate the endpoint with; give both",
            id="https-spiffe-without-bundle",
        ),
    ],
)  # fmt: skip
def test_refusals_carry_their_status_and_the_fix(
    admin: httpx.Client, method: str, path: str, body: dict[str, Any] | None, status: int, error: str
) -> None:
    response = admin.request(method, path, json=body)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert all(r["trust_domain"] != "nobundle.test" for r in admin.get(BASE).json()["relationships"])


def test_a_body_with_an_unknown_field_is_refused(admin: httpx.Client) -> None:
    response = admin.post(BASE, json=web_body("extra.test", bundle="{}"))
    assert (response.status_code, response.json()["error"]) == (
        400,
        "malformed request: bundle: Extra inputs are not permitted",
    )
    assert admin.get(f"{BASE}/extra.test").status_code == 404
