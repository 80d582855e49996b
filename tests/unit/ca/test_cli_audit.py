"""``trustmesh-ca audit list|verify|export`` (ca/cli_audit.py) through the real ``main``, with the admin
client replaced by a fake that pages through a list of records as the admin API does."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ca import cli
from ca.cli import main
from ca.cli_audit import audit_table, parse_time
from spiffe_core.errors import InvalidArgument

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def record(n: int, **changes: Any) -> dict[str, Any]:
    document = {
        "id": n,
        "at": f"2030-01-02T03:04:{n:02d}.000000+00:00",
        "actor": "local-admin",
        "auth_method": "unix-socket",
        "role": "",
        "action": "entry.create",
        "target": f"entry-{n}",
        "outcome": "ok",
        "reason": "",
        "detail": {},
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    return document | changes


@dataclass
class FakeAuditClient:
    """Answers ``GET /v1/audit`` from ``records`` as the API pages them; records every request."""

    records: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __enter__(self) -> FakeAuditClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def get_json(self, path: str, **params: str) -> Any:
        self.requests.append((path, params))
        chosen = [r for r in self.records if r["id"] > int(params.get("after_id", "0"))]
        if "before_id" in params:
            chosen = [r for r in chosen if r["id"] < int(params["before_id"])]
        if params.get("newest_first") == "true":
            chosen = chosen[::-1]
        return {"records": chosen[: int(params["limit"])]}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.requests.append((path, kwargs))
        return httpx.Response(200, json=self.verify)

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        raise AssertionError("audit commands change nothing")

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        self.requests.append((path, kwargs))
        yield httpx.Response(200, content=b'{"id": 1}\n{"id": 2}\n')


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeAuditClient:
    fake = FakeAuditClient()
    monkeypatch.setattr(cli, "_client", lambda _args: fake)
    return fake


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1h", NOW - timedelta(hours=1), id="duration"),
        pytest.param("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC), id="iso-z"),
        pytest.param("2030-01-01T02:00:00+02:00", datetime(2030, 1, 1, tzinfo=UTC), id="iso-offset"),
    ],
)
def test_a_time_is_a_duration_back_or_an_iso_time_with_a_zone(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW, "--since") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "2030-01-01T00:00:00",
            "--since '2030-01-01T00:00:00' has no time zone; add one, e.g. 2030-01-01T00:00:00Z",
            id="no-zone",
        ),
        pytest.param(
            "yesterday",
            "--since 'yesterday' is neither a duration nor a time; write e.g. --since 1h or --since "
            "2026-11-22T12:00:00Z",
            id="garbage",
        ),
    ],
)
def test_a_time_that_is_neither_is_refused_saying_how_to_write_it(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_time(text, NOW, "--since")
    assert str(raised.value) == message


def test_list_without_since_shows_the_newest_records_oldest_first(
    client: FakeAuditClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.records = [record(n) for n in range(1, 6)]
    code, out, _ = run(capsys, "audit", "list", "--limit", "2", "--action", "entry.")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["ID", "4", "5"]
    assert client.requests == [("/v1/audit", {"action": "entry.", "limit": "2", "newest_first": "true"})]


def test_list_since_pages_forward_until_the_limit(client: FakeAuditClient, capsys: pytest.CaptureFixture[str]) -> None:
    client.records = [record(n) for n in range(1, 2501)]
    code, out, _ = run(capsys, "audit", "list", "--since", "2030-01-01T00:00:00Z", "--limit", "2100", "--json")
    assert code == 0
    assert [(params.get("after_id"), params["limit"]) for _, params in client.requests] == [
        (None, "1000"),
        ("1000", "1000"),
        ("2000", "100"),
    ]
    assert client.requests[0][1]["since"] == "2030-01-01T00:00:00+00:00"
    assert '"id": 2100' in out


def test_list_of_nothing_says_so_on_stderr(client: FakeAuditClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "audit", "list") == (0, "", "no audit records match\n")


def test_the_table_shows_who_how_and_why_a_refusal_or_dry_run() -> None:
    refusal = record(
        9,
        actor="spiffe://example.org/admin/alice",
        auth_method="mtls",
        role="security-officer",
        action="authority.taint",
        outcome="denied",
        reason="authority abc is active",
        detail={"dry_run": True},
    )
    assert audit_table([record(1), refusal]) == [
        "ID  TIME (UTC)           ACTOR                                                        ACTION           "
        "TARGET   OUTCOME",
        "1   2030-01-02 03:04:01  local-admin (unix-socket)                                    entry.create     "
        "entry-1  ok",
        "9   2030-01-02 03:04:09  spiffe://example.org/admin/alice (mtls) as security-officer  authority.taint  "
        "entry-9  dry run, denied: authority abc is active",
    ]


@pytest.mark.parametrize(("ok", "code"), [pytest.param(True, 0, id="ok"), pytest.param(False, 1, id="problem")])
def test_verify_prints_its_one_line_and_exits_by_the_result(
    client: FakeAuditClient, capsys: pytest.CaptureFixture[str], ok: bool, code: int
) -> None:
    client.verify = {"ok": ok, "summary": "the line", "notes": ["stale"]}
    assert run(capsys, "audit", "verify") == (code, "the line\n", "note: stale\n")


def test_export_writes_the_lines_to_an_owner_only_file(
    client: FakeAuditClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "audit.jsonl"
    code, stdout, stderr = run(capsys, "audit", "export", "--since", "1h", "--out", str(out))
    assert (code, stdout, stderr) == (0, "", f"wrote 2 audit records to {out}\n")
    assert out.read_text() == '{"id": 1}\n{"id": 2}\n'
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert set(client.requests[0][1]["params"]) == {"since"}
