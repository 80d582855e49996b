"""``trustmesh-ca federation create|list|show|refresh|delete`` (ca/cli_federation.py) through the real
``main``, with the admin client replaced by a fake that records requests and answers canned replies
(the same fake as the authority commands'). tests/integration/ca/test_cli_federation.py runs them
against a real CA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ca import cli
from spiffe_core.errors import NotFound
from tests.unit.ca.test_cli_authorities import FakeAdminClient, run

BASE = "/v1/federation/relationships"
B: dict[str, Any] = {
    "trust_domain": "b.test",
    "bundle_endpoint_url": "https://ca.b.test:8443/",
    "profile": "https_spiffe",
    "endpoint_spiffe_id": "spiffe://b.test/trustmesh/server",
    "created_at": "2030-01-02T03:04:05Z",
    "bundle_sequence": 7,
    "x509_authorities": 2,
    "jwt_authorities": 1,
    "last_attempt_at": "2030-01-02T03:05:00Z",
    "last_success_at": "2030-01-02T03:05:00Z",
    "next_refresh_at": "2030-01-02T03:10:00Z",
    "last_error": "",
}
C: dict[str, Any] = {
    **B,
    "trust_domain": "c.test",
    "bundle_endpoint_url": "https://bundle.c.test/",
    "profile": "https_web",
    "endpoint_spiffe_id": None,
    "bundle_sequence": None,
    "x509_authorities": 0,
    "jwt_authorities": 0,
    "last_success_at": None,
    "last_error": "fetching https://bundle.c.test/ failed: connection refused",
}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeAdminClient:
    fake = FakeAdminClient(
        replies={
            BASE: {"relationships": [B, C]},
            f"{BASE}/b.test": B,
            f"{BASE}/b.test/refresh": B,
        }
    )
    monkeypatch.setattr(cli, "_client", lambda _args: fake)
    return fake


# --- arguments → requests ------------------------------------------------------------------------------


def test_create_sends_the_spec_with_the_bootstrap_bundle_read_from_its_file(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient, tmp_path: Path
) -> None:
    (tmp_path / "b.json").write_text('{"keys": []}')
    client.replies[BASE] = B
    code, _out, err = run(
        capsys,
        "federation",
        "create",
        "b.test",
        "--url",
        "https://ca.b.test:8443/",
        "--profile",
        "https_spiffe",
        "--endpoint-spiffe-id",
        "spiffe://b.test/trustmesh/server",
        "--bundle-file",
        str(tmp_path / "b.json"),
    )
    assert (code, err) == (0, "")
    assert client.requests == [
        (
            "POST",
            BASE,
            {
                "trust_domain": "b.test",
                "bundle_endpoint_url": "https://ca.b.test:8443/",
                "profile": "https_spiffe",
                "endpoint_spiffe_id": "spiffe://b.test/trustmesh/server",
                "bootstrap_bundle": '{"keys": []}',
            },
        )
    ]


def test_create_for_https_web_sends_no_endpoint_id_or_bundle(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient
) -> None:
    client.replies[BASE] = C
    code, _out, _err = run(
        capsys, "federation", "create", "c.test", "--url", "https://bundle.c.test/", "--profile", "https_web"
    )
    assert code == 0
    assert client.requests[0][2] == {
        "trust_domain": "c.test",
        "bundle_endpoint_url": "https://bundle.c.test/",
        "profile": "https_web",
        "endpoint_spiffe_id": None,
        "bootstrap_bundle": None,
    }


@pytest.mark.parametrize(
    ("args", "request_sent"),
    [
        pytest.param(("federation", "list"), ("GET", BASE, {}), id="list"),
        pytest.param(("federation", "show", "b.test"), ("GET", f"{BASE}/b.test", {}), id="show"),
        pytest.param(("federation", "refresh", "b.test"), ("POST", f"{BASE}/b.test/refresh", {}), id="refresh"),
        pytest.param(("federation", "delete", "b.test"), ("DELETE", f"{BASE}/b.test", None), id="delete"),
    ],
)
def test_command_sends_its_request(
    capsys: pytest.CaptureFixture[str],
    client: FakeAdminClient,
    args: tuple[str, ...],
    request_sent: tuple[str, str, Any],
) -> None:
    client.replies[f"{BASE}/b.test"] = B
    code, _out, err = run(capsys, *args)
    assert (code, err, client.requests) == (0, "", [request_sent])


@pytest.mark.parametrize("command", ["show", "refresh", "delete", "create"])
def test_a_malformed_trust_domain_is_refused_before_contacting_the_ca(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient, command: str
) -> None:
    extra = ("--url", "https://x/", "--profile", "https_web") if command == "create" else ()
    code, out, err = run(capsys, "federation", command, "B.test/../x", *extra)
    assert (code, out, client.requests) == (1, "", [])
    assert err.startswith("trustmesh-ca: error: trust domain 'B.test/../x' ")
    assert len(err.splitlines()) == 1


def test_a_missing_bundle_file_is_a_one_line_error_and_nothing_is_sent(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.json"
    code, out, err = run(
        capsys, "federation", "create", "b.test", "--url", "https://x/", "--profile", "https_spiffe",
        "--bundle-file", str(missing),
    )  # fmt: skip
    assert (code, out, err) == (1, "", f"trustmesh-ca: error: No such file or directory: {missing}\n")
    assert client.requests == []


# --- output ---------------------------------------------------------------------------------------------


def test_list_prints_an_aligned_status_table(capsys: pytest.CaptureFixture[str], client: FakeAdminClient) -> None:
    _code, out, _err = run(capsys, "federation", "list")
    assert out.splitlines() == [
        "TRUST DOMAIN  PROFILE       SEQUENCE  LAST SUCCESS          NEXT REFRESH          LAST ERROR",
        "b.test        https_spiffe  7         2030-01-02T03:05:00Z  2030-01-02T03:10:00Z  -",
        "c.test        https_web     -         -                     2030-01-02T03:10:00Z  "
        "fetching https://bundle.c.test/ failed: connection refused",
    ]


def test_show_prints_the_relationship_and_its_status(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient
) -> None:
    _code, out, _err = run(capsys, "federation", "show", "b.test")
    assert out.splitlines() == [
        "Trust domain    : b.test",
        "Endpoint URL    : https://ca.b.test:8443/",
        "Profile         : https_spiffe",
        "Endpoint ID     : spiffe://b.test/trustmesh/server",
        "Created         : 2030-01-02T03:04:05Z",
        "Bundle sequence : 7",
        "Authorities     : 2 X.509, 1 JWT",
        "Last attempt    : 2030-01-02T03:05:00Z",
        "Last success    : 2030-01-02T03:05:00Z",
        "Next refresh    : 2030-01-02T03:10:00Z",
        "Last error      : -",
    ]


def test_refresh_says_where_the_outcome_shows(capsys: pytest.CaptureFixture[str], client: FakeAdminClient) -> None:
    _code, out, _err = run(capsys, "federation", "refresh", "b.test")
    assert out == "asked for a fetch of b.test's bundle; `federation show` reports the outcome\n"


def test_delete_says_the_bundle_leaves_every_workload(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient
) -> None:
    _code, out, _err = run(capsys, "federation", "delete", "b.test")
    assert out == "deleted the relationship with b.test; its bundle leaves every workload now\n"


@pytest.mark.parametrize("command", ["show", "refresh", "delete"])
def test_json_is_the_ca_reply(capsys: pytest.CaptureFixture[str], client: FakeAdminClient, command: str) -> None:
    _code, out, _err = run(capsys, "federation", command, "b.test", "--json")
    assert json.loads(out) == B


def test_list_json_is_the_list_of_relationships(capsys: pytest.CaptureFixture[str], client: FakeAdminClient) -> None:
    _code, out, _err = run(capsys, "federation", "list", "--json")
    assert json.loads(out) == [B, C]


def test_refusal_by_the_ca_is_a_one_line_error(capsys: pytest.CaptureFixture[str], client: FakeAdminClient) -> None:
    client.error = NotFound("no federation relationship with b.test; `trustmesh-ca federation list` shows them")
    code, out, err = run(capsys, "federation", "show", "b.test")
    assert (code, out, err) == (
        1,
        "",
        "trustmesh-ca: error: no federation relationship with b.test; `trustmesh-ca federation list` shows them\n",
    )
