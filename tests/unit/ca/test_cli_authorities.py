"""``trustmesh-ca authority …``, ``revoke`` and ``crl show`` (ca/cli_authorities.py) through the real
``main``, with the admin client replaced by a fake that records requests and answers canned replies."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from ca import cli
from ca.cli import main
from spiffe_core.errors import FailedPrecondition

AUTHORITY = "3f1c9a0b7d2e4f56a8b9c0d1e2f3a4b5c6d7e8f9"
REPORT: dict[str, Any] = {
    "action": "rotate",
    "dry_run": True,
    "changes": [
        {"authority_id": "(new)", "kind": "x509", "before": None, "after": "active"},
        {"authority_id": AUTHORITY, "kind": "x509", "before": "active", "after": "tainted"},
    ],
    "svids_affected": 12,
    "agents_affected": [f"spiffe://example.org/trustmesh/agent/join_token/node-{i}" for i in range(1, 8)],
    "bundle_x509": [AUTHORITY, "(new)"],
    "bundle_jwt": ["jwtkey1"],
    "revoked_serials": [],
    "notes": [],
}
AUTHORITIES = [
    {"id": AUTHORITY, "kind": "x509", "state": "active", "not_after": "2030-01-03T03:04:05Z", "live_svids": 12},
    {"id": "jwtkey1", "kind": "jwt", "state": "prepared", "not_after": "2030-01-04T03:04:05Z", "live_svids": 0},
]
SHOWN: dict[str, Any] = {
    **AUTHORITIES[0],
    "key_type": "ec-p256",
    "not_before": "2030-01-02T02:04:05Z",
    "created_at": "2030-01-02T02:04:05Z",
    "activated_at": "2030-01-02T02:04:05Z",
    "retired_at": None,
    "tainted_at": None,
    "revoked_at": None,
    "signed_until": "2030-01-02T04:04:05Z",
    "upstream": "O=Example,C=US",
    "certificate_pem": "-----BEGIN CERTIFICATE-----\nCCC\n-----END CERTIFICATE-----\n",
}
CRLS = [
    {"authority_id": AUTHORITY, "pem": "-----BEGIN X509 CRL-----\nAAA\n-----END X509 CRL-----\n"},
    {"authority_id": "rootid", "pem": "-----BEGIN X509 CRL-----\nBBB\n-----END X509 CRL-----\n"},
]


@dataclass
class FakeAdminClient:
    """Records (method, path, body or params); answers from ``replies`` by path, else REPORT."""

    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    replies: dict[str, Any] = field(default_factory=dict)
    error: Exception | None = None

    def __enter__(self) -> FakeAdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def _answer(self, method: str, path: str, sent: Any) -> Any:
        self.requests.append((method, path, sent))
        if self.error is not None:
            raise self.error
        return self.replies.get(path, REPORT)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.Response(200, json=self._answer(method, path, kwargs.get("json")))

    def get_json(self, path: str, **params: str) -> Any:
        return self._answer("GET", path, params)

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return self._answer("POST", path, body)


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeAdminClient:
    fake = FakeAdminClient(
        replies={
            "/v1/authorities": {"authorities": AUTHORITIES},
            f"/v1/authorities/{AUTHORITY}": SHOWN,
            "/v1/crls": {"crls": CRLS},
        }
    )
    monkeypatch.setattr(cli, "_client", lambda _args: fake)
    return fake


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --- arguments → requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "request_sent"),
    [
        pytest.param(
            ("authority", "prepare"),
            ("POST", "/v1/authorities/prepare", {"kind": "x509", "dry_run": False}),
            id="prepare",
        ),
        pytest.param(
            ("authority", "prepare", "--jwt", "--dry-run"),
            ("POST", "/v1/authorities/prepare", {"kind": "jwt", "dry_run": True}),
            id="prepare-jwt-dry-run",
        ),
        pytest.param(
            ("authority", "activate", AUTHORITY, "--dry-run", "--force"),
            ("POST", f"/v1/authorities/{AUTHORITY}/activate", {"dry_run": True, "force": True}),
            id="activate",
        ),
        pytest.param(
            ("authority", "taint", AUTHORITY, "--dry-run"),
            ("POST", f"/v1/authorities/{AUTHORITY}/taint", {"dry_run": True}),
            id="taint",
        ),
        pytest.param(
            ("authority", "revoke", AUTHORITY),
            ("POST", f"/v1/authorities/{AUTHORITY}/revoke", {"dry_run": False}),
            id="authority-revoke",
        ),
        pytest.param(
            ("authority", "rotate", "--now", "--jwt", "--dry-run"),
            ("POST", "/v1/authorities/rotate", {"kind": "jwt", "dry_run": True}),
            id="rotate-now",
        ),
        pytest.param(
            ("revoke", "--serial", "DE:AD", "--reason", "key-compromise"),
            (
                "POST",
                "/v1/revocations",
                {"serial": "DE:AD", "spiffe_id": None, "reason": "key-compromise", "dry_run": False},
            ),
            id="revoke-serial",
        ),
        pytest.param(
            ("revoke", "--spiffe-id", "spiffe://example.org/web", "--dry-run"),
            (
                "POST",
                "/v1/revocations",
                {"serial": None, "spiffe_id": "spiffe://example.org/web", "reason": None, "dry_run": True},
            ),
            id="revoke-spiffe-id",
        ),
        pytest.param(("authority", "show", AUTHORITY), ("GET", f"/v1/authorities/{AUTHORITY}", {}), id="show"),
    ],
)
def test_command_sends_its_request(
    capsys: pytest.CaptureFixture[str],
    client: FakeAdminClient,
    args: tuple[str, ...],
    request_sent: tuple[str, str, Any],
) -> None:
    code, _out, err = run(capsys, *args)
    assert (code, err, client.requests) == (0, "", [request_sent])


def test_rotate_without_now_is_refused_before_contacting_the_ca(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["authority", "rotate", "--dry-run"])
    err = capsys.readouterr().err
    assert (exit_info.value.code, client.requests) == (2, [])
    assert "scheduled rotation happens by itself" in err
    assert "`authority rotate --now` is the emergency rotation" in err


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("revoke",), id="neither"),
        pytest.param(("revoke", "--serial", "ab", "--spiffe-id", "spiffe://example.org/web"), id="both"),
        pytest.param(("revoke", "--serial", "ab", "--reason", "because"), id="unknown-reason"),
    ],
)
def test_revoke_is_a_usage_error_without_exactly_one_target_and_a_known_reason(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient, args: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    capsys.readouterr()
    assert (exit_info.value.code, client.requests) == (2, [])


# --- output ---------------------------------------------------------------------------------------------


def test_dry_run_report_says_nothing_changed_and_what_would(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient
) -> None:
    _code, out, _err = run(capsys, "authority", "rotate", "--now", "--dry-run")
    assert out.splitlines() == [
        "DRY RUN: nothing was changed",
        "authority (new): new -> active",
        f"authority {AUTHORITY}: active -> tainted",
        "X509-SVIDs to re-issue: 12",
        "agents affected: 7 (spiffe://example.org/trustmesh/agent/join_token/node-1, "
        "spiffe://example.org/trustmesh/agent/join_token/node-2, "
        "spiffe://example.org/trustmesh/agent/join_token/node-3, "
        "spiffe://example.org/trustmesh/agent/join_token/node-4, "
        "spiffe://example.org/trustmesh/agent/join_token/node-5, and 2 more)",
        f"bundle after: x509 [{AUTHORITY}, (new)], jwt [jwtkey1]",
    ]


def test_applied_report_has_no_dry_run_header(capsys: pytest.CaptureFixture[str], client: FakeAdminClient) -> None:
    client.replies["/v1/authorities/prepare"] = {**REPORT, "dry_run": False}
    _code, out, _err = run(capsys, "authority", "prepare")
    assert not out.startswith("DRY RUN")


def test_svid_revocation_report_lists_the_revoked_serials(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient
) -> None:
    client.replies["/v1/revocations"] = {
        **REPORT,
        "dry_run": False,
        "changes": [],
        "agents_affected": [],
        "revoked_serials": ["dead", "beef"],
    }
    _code, out, _err = run(capsys, "revoke", "--spiffe-id", "spiffe://example.org/web")
    assert out.splitlines()[:3] == [
        "X509-SVIDs revoked: 2 (dead, beef)",
        "X509-SVIDs to re-issue: 12",
        "agents affected: 0",
    ]


def test_report_json_is_the_ca_reply(capsys: pytest.CaptureFixture[str], client: FakeAdminClient) -> None:
    _code, out, _err = run(capsys, "authority", "taint", AUTHORITY, "--json")
    assert json.loads(out) == REPORT


def test_authority_list_prints_an_aligned_table(capsys: pytest.CaptureFixture[str], client: FakeAdminClient) -> None:
    _code, out, _err = run(capsys, "authority", "list")
    pad = " " * (len(AUTHORITY) - len("jwtkey1"))
    assert out.splitlines() == [
        "ID" + " " * (len(AUTHORITY) - 2) + "  KIND  STATE     NOT AFTER             LIVE SVIDS",
        f"{AUTHORITY}  x509  active    2030-01-03T03:04:05Z  12",
        f"jwtkey1{pad}  jwt   prepared  2030-01-04T03:04:05Z  0",
    ]


def test_authority_show_prints_labelled_fields_then_the_certificate(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient
) -> None:
    _code, out, _err = run(capsys, "authority", "show", AUTHORITY)
    assert out.splitlines() == [
        f"Authority ID: {AUTHORITY}",
        "Kind        : x509",
        "State       : active",
        "Key type    : ec-p256",
        "Not before  : 2030-01-02T02:04:05Z",
        "Not after   : 2030-01-03T03:04:05Z",
        "Created     : 2030-01-02T02:04:05Z",
        "Activated   : 2030-01-02T02:04:05Z",
        "Retired     : -",
        "Tainted     : -",
        "Revoked     : -",
        "Live SVIDs  : 12",
        "Signed until: 2030-01-02T04:04:05Z",
        "Upstream    : O=Example,C=US",
        "-----BEGIN CERTIFICATE-----",
        "CCC",
        "-----END CERTIFICATE-----",
    ]


def test_crl_show_prints_every_pem(capsys: pytest.CaptureFixture[str], client: FakeAdminClient) -> None:
    _code, out, _err = run(capsys, "crl", "show")
    assert out == CRLS[0]["pem"] + CRLS[1]["pem"]


def test_crl_show_for_one_authority_prints_only_its_crl(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient
) -> None:
    _code, out, _err = run(capsys, "crl", "show", "--authority", "rootid")
    assert out == CRLS[1]["pem"]


def test_crl_show_for_an_authority_without_crl_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], client: FakeAdminClient
) -> None:
    code, out, err = run(capsys, "crl", "show", "--authority", "nope")
    assert (code, out, err) == (
        1,
        "",
        "trustmesh-ca: error: no CRL is published for authority 'nope'; "
        "`trustmesh-ca crl show` lists the published ones\n",
    )


def test_refusal_by_the_ca_is_a_one_line_error(capsys: pytest.CaptureFixture[str], client: FakeAdminClient) -> None:
    client.error = FailedPrecondition("authority abc is active; activate a successor first")
    code, out, err = run(capsys, "authority", "taint", "abc")
    assert (code, out, err) == (1, "", "trustmesh-ca: error: authority abc is active; activate a successor first\n")
